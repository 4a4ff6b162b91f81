"""In-memory classification data modules: batches are dicts of tensors, fetched a batch at a time."""

from __future__ import annotations

from typing import ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from anydistill.core.cache import tensor_fingerprint
from anydistill.core.recipe import PositiveInt


class EpochShuffleSampler(Sampler[int]):
    """This process's share of an epoch order that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` at the start of every epoch, so a resumed run replays the same
    batches (``RandomSampler`` draws from the global RNG, which a resume does not restore). Under
    DDP, rank r takes positions r, r + W, r + 2W... of the order: W processes with batch B see,
    step for step, the rows one process sees with batch W * B.

    Args:
        num_rows: dataset size.
        seed: the shuffling seed.
        shuffle: a fresh permutation every epoch, or the rows in order.
        rank, world_size: this process's rank and the number of processes (the order is padded by
            wrapping around so every rank gets the same number of rows, as DistributedSampler does).
        epoch_rows: rows per epoch when it differs from ``num_rows``: successive permutations of
            the rows are concatenated up to it (a labelled subset then takes as many steps per
            epoch as the whole training split).
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 epoch_rows: int | None = None):
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch_rows = epoch_rows or num_rows
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.epoch_rows // self.world_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order: list[int] = []
        while len(order) < self.epoch_rows:
            order += torch.randperm(self.num_rows, generator=generator).tolist() if self.shuffle else list(range(self.num_rows))
        order = order[: self.epoch_rows]
        order += order[: len(self) * self.world_size - self.epoch_rows]
        return iter(order[self.rank :: self.world_size])


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image of ``x`` [B, C, H, W] by up to ``max_shift`` pixels (zero fill)."""
    padded = torch.nn.functional.pad(x, [max_shift] * 4)
    span = 2 * max_shift + 1
    shift = torch.randint(0, span * span, (x.shape[0],))
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for code in shift.unique().tolist():  # one slice per distinct shift, not per image
        rows = (shift == code).nonzero().squeeze(1)
        dy, dx = divmod(code, span)
        out[rows] = padded[rows, :, dy : dy + h, dx : dx + w]
    return out


def balanced_subset(y: torch.Tensor, size: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Sorted row indices of ``size`` rows of ``y`` [N], ``size // num_classes`` per class (the
    remainder to the lowest classes), each class's rows a seeded random draw."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label in range(num_classes):
        members = (y == label).nonzero().squeeze(1)
        take = size // num_classes + (1 if label < size % num_classes else 0)
        rows.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(rows).sort().values


IGNORE_LABEL = -100  # F.cross_entropy's ignore_index: a training row whose label a method may not read


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image of ``x`` [B, C, H, W] left-right with probability 1/2."""
    mirrored = torch.rand(x.shape[0]) < 0.5
    return torch.where(mirrored.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)


class IndexedTensors(torch.utils.data.Dataset):
    """Rows of ``x`` [N, ...] and ``y`` [N] with their index and any attached teacher signals.

    ``__getitems__`` returns a whole batch by tensor indexing (no per-row collate): a batch is
    ``{"x", "y", "index", "teacher/logits", "teacher/features/<path>", ...}``. With ``max_shift``
    each image is translated by up to that many pixels (`random_shift`), then with ``flip`` mirrored
    left-right half of the time (`random_flip`), anew at every fetch.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, signals: dict[str, torch.Tensor] | None = None, max_shift: int = 0,
                 flip: bool = False):
        self.x, self.y, self.signals, self.max_shift, self.flip = x, y, signals or {}, max_shift, flip

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.x[index]
        if self.max_shift:
            x = random_shift(x, self.max_shift)
        if self.flip:
            x = random_flip(x)
        batch = {"x": x, "y": self.y[index], "index": index}
        for name, values in self.signals.items():
            batch[f"teacher/{name}"] = values[index]
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([i]).items()}


def _already_batched(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class TensorClassificationData(L.LightningDataModule):
    """Base of the zoo's image-classification data: three in-memory splits of (x, y).

    Subclasses set the class attributes and implement ``load_splits``.

    Args:
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size of validation and test passes.
        shuffle: reshuffle the training set every epoch (a deterministic function of seed and epoch).
        augment: random translations of up to ``augment_shift`` pixels (2 unless a subclass says
            otherwise), and left-right mirroring when ``augment_flip``, drawn anew each epoch. A
            teacher signal cache cannot be used with it (the teacher would have to see the shifted inputs).
        train_limit: keep only the first N training rows (quick experiments, tests).
        seed: the shuffling seed.
        labelled_count: keep the labels of only this many training rows (a stratified draw seeded
            by ``labelled_seed``; Hinton et al.'s transfer set): methods that learn from the
            teacher's signals (``DistillationMethod.unlabelled``) see every row, the others (the
            scratch baseline, a teacher trained in the run) only the labelled ones.
        labelled_seed: the seed of that draw (independent of the run's seed, so every seed of a
            benchmark sees the same labelled rows).
    """

    input_shape: ClassVar[tuple[int, ...]] = ()
    num_classes: ClassVar[int] = 0
    transform: ClassVar[str] = ""
    normalisation: ClassVar[dict[str, list[float]]] = {"mean": [0.0], "std": [1.0]}  # of the inputs, per channel
    augment_shift: ClassVar[int] = 2  # pixels of random translation under `augment`
    augment_flip: ClassVar[bool] = False  # random left-right mirroring under `augment` (digits are not symmetric)

    def __init__(
        self,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1024,
        shuffle: bool = True,
        augment: bool = False,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
        labelled_count: PositiveInt | None = None,
        labelled_seed: int = 0,
    ):
        super().__init__()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.shuffle, self.augment, self.train_limit, self.seed = shuffle, augment, train_limit, seed
        self.labelled_count, self.labelled_seed = labelled_count, labelled_seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.signals: dict[str, torch.Tensor] = {}
        self.labelled_rows: torch.Tensor | None = None  # set in setup when labelled_count is
        self.serve_unlabelled = False

    @classmethod
    def missing_package(cls) -> str | None:
        """Why the data cannot be loaded on this machine (checked when a recipe is validated, before
        anything is written), or None."""
        return None

    @property
    def inputs_vary_per_epoch(self) -> bool:
        """Whether a training row's input changes between epochs (then no signal cache can be valid)."""
        return self.augment

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{"train": (x, y), "val": ..., "test": ...}`` with x float32 [N, *input_shape], y int64 [N]."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            splits = self.load_splits()
            if self.train_limit is not None:
                x, y = splits["train"]
                splits["train"] = (x[: self.train_limit], y[: self.train_limit])
            if self.labelled_count is not None:
                y = splits["train"][1]
                classes = self.num_classes or (int(y.max()) + 1 if len(y) else 0)
                if self.labelled_count > len(y) or self.labelled_count < classes:
                    raise ValueError(f"data.labelled_count={self.labelled_count}: give between {classes} (one per class) and "
                                     f"{len(y)} (the training split's rows).")
                self.labelled_rows = balanced_subset(y, self.labelled_count, classes, self.labelled_seed)
            self.splits = splits

    def use_unlabelled(self, flag: bool) -> None:
        """Serve every training row (labels of the rows outside ``labelled_count`` set to -100) to a
        method that learns from teacher signals, or only the labelled rows to one that does not.
        Without ``labelled_count`` every row is labelled and served either way."""
        self.serve_unlabelled = flag

    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The (x, y, signals) the training loader serves (see `use_unlabelled`)."""
        x, y = self.split("train")
        if self.labelled_rows is None:
            return x, y, self.signals
        if self.serve_unlabelled:
            masked = torch.full_like(y, IGNORE_LABEL)
            masked[self.labelled_rows] = y[self.labelled_rows]
            return x, masked, self.signals
        rows = self.labelled_rows
        return x[rows], y[rows], {name: values[rows] for name, values in self.signals.items()}

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) tensors of split ``name`` ("train", "val" or "test")."""
        self.setup()
        return self.splits[name]

    def fingerprint(self, name: str = "train") -> str:
        """Fingerprint of a split's inputs and transform, for the signal cache manifest."""
        return tensor_fingerprint(self.split(name)[0], self.__class__.__name__, self.transform)

    def attach_signals(self, signals: dict[str, torch.Tensor]) -> None:
        """Serve cached teacher signals (rows aligned with the training split) in training batches."""
        self.signals = signals

    def train_dataloader(self) -> DataLoader:
        x, y, signals = self.training_rows()
        dataset = IndexedTensors(x, y, signals, max_shift=self.augment_shift if self.augment else 0,
                                 flip=self.augment_flip and self.augment)
        # The engine turns off Lightning's sampler injection (whose DDP sampler always shuffles).
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        # An epoch is as long as the whole training split for every method: a baseline on the
        # labelled rows alone takes as many steps as a method that sees them all.
        sampler = EpochShuffleSampler(len(dataset), self.seed, self.shuffle, rank, world_size, epoch_rows=len(self.split("train")[1]))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_already_batched)

    def _eval_loader(self, name: str) -> DataLoader:
        x, y = self.split(name)
        return DataLoader(IndexedTensors(x, y), batch_size=self.eval_batch_size, collate_fn=_already_batched)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
