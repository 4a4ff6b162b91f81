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
    """

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_rows // self.world_size)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = list(range(self.num_rows))
        order += order[: len(self) * self.world_size - self.num_rows]
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


class IndexedTensors(torch.utils.data.Dataset):
    """Rows of ``x`` [N, ...] and ``y`` [N] with their index and any attached teacher signals.

    ``__getitems__`` returns a whole batch by tensor indexing (no per-row collate): a batch is
    ``{"x", "y", "index", "teacher/logits", "teacher/features/<path>", ...}``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, signals: dict[str, torch.Tensor] | None = None, max_shift: int = 0):
        self.x, self.y, self.signals, self.max_shift = x, y, signals or {}, max_shift

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.x[index]
        batch = {"x": random_shift(x, self.max_shift) if self.max_shift else x, "y": self.y[index], "index": index}
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
        augment: random translations of up to 2 pixels, drawn anew each epoch. A teacher signal
            cache cannot be used with it (the teacher would have to see the shifted inputs).
        train_limit: keep only the first N training rows (quick experiments, tests).
        seed: the shuffling seed.
    """

    input_shape: ClassVar[tuple[int, ...]] = ()
    num_classes: ClassVar[int] = 0
    transform: ClassVar[str] = ""
    normalisation: ClassVar[dict[str, list[float]]] = {"mean": [0.0], "std": [1.0]}  # of the inputs, per channel

    def __init__(
        self,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1024,
        shuffle: bool = True,
        augment: bool = False,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.shuffle, self.augment, self.train_limit, self.seed = shuffle, augment, train_limit, seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.signals: dict[str, torch.Tensor] = {}

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
            self.splits = splits

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
        x, y = self.split("train")
        dataset = IndexedTensors(x, y, self.signals, max_shift=2 if self.augment else 0)
        # The engine turns off Lightning's sampler injection (whose DDP sampler always shuffles).
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShuffleSampler(len(dataset), self.seed, self.shuffle, rank, world_size)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_already_batched)

    def _eval_loader(self, name: str) -> DataLoader:
        x, y = self.split(name)
        return DataLoader(IndexedTensors(x, y), batch_size=self.eval_batch_size, collate_fn=_already_batched)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
