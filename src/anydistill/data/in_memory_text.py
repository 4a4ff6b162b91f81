"""Text a Python caller already holds (a ``datasets.Dataset``, a ``DatasetDict``, a list of row
dicts), with a tokenizer object or folder, served to the language-model family like a user's files:
`bind_lm_data` is the family's binder for `anydistill.distill` (``api.inputs.IN_MEMORY_DATA``).

Rows are in TRL's formats, as `LMDataset` reads them from files: ``text``; ``prompt`` +
``completion``; ``messages``.
"""

from __future__ import annotations

import copy
import hashlib
import os
from typing import Any, ClassVar, Literal

from anydistill.core.recipe import NonNegativeInt, PositiveInt
from anydistill.data.lm_dataset import (
    FORMAT_COLUMNS,
    HeldOutFraction,
    LMDataset,
    TokenizerFolder,
    checked_tokenizer,
)

ACCEPTED = ("a Hugging Face datasets.Dataset, a DatasetDict with train (and validation/test) splits, a list of row dicts or of "
            "strings, a dict of columns, or {'train': ..., 'val': ..., 'test': ...} of those; rows in TRL's formats: {'text'}, "
            "{'prompt', 'completion'} or {'messages': [{'role', 'content'}, ...]}; or a data-module name or {'name': ..., options} "
            "mapping (e.g. {'name': 'lm-dataset', 'train': 'chats.jsonl', 'tokenizer': FOLDER})")
SPLIT_KEYS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


class InMemoryLMDataset(LMDataset):
    """`LMDataset` over rows held in memory: ``tables`` maps "train" (and optionally "val", "test")
    to a ``datasets.Dataset``; a missing split is held out of the training rows as with files.
    The tokenizer is the folder ``tokenizer`` when given, else the object bound with the rows.
    Created per call by `bind`, never named in a recipe file.

    Args: `LMDataset`'s, without ``train``, ``val`` and ``test``.
    """

    tables: ClassVar[dict[str, Any]] = {}
    tokenizer_object: ClassVar[Any] = None
    description: ClassVar[str] = "rows in memory"

    def __init__(
        self,
        tokenizer: TokenizerFolder | None = None,
        format: Literal["auto", "text", "prompt-completion", "messages"] = "auto",
        val_fraction: HeldOutFraction = 0.1,
        test_fraction: HeldOutFraction = 0.1,
        split_seed: int = 0,
        block_size: PositiveInt = 256,
        prompt_tokens: NonNegativeInt = 0,
        batch_size: PositiveInt = 8,
        eval_batch_size: PositiveInt = 32,
        train_limit: PositiveInt | None = None,
        eval_limit: PositiveInt | None = None,
        shuffle: bool = True,
        seed: int = 0,
        domain_column: str | None = None,
    ):
        if tokenizer is None and self.tokenizer_object is None:
            raise ValueError("The in-memory text data needs a tokenizer: pass tokenizer= (a transformers tokenizer or its folder).")
        # The descriptions stand where LMDataset's messages name a file or a tokenizer folder.
        names = {split: f"{self.description}, {split} split" if split in self.tables else None for split in SPLIT_KEYS}
        super().__init__(tokenizer or "memory (the tokenizer object given to distill())", names["train"], val=names["val"],
                         test=names["test"], format=format, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                         block_size=block_size, prompt_tokens=prompt_tokens, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         train_limit=train_limit, eval_limit=eval_limit, shuffle=shuffle, seed=seed,
                         domain_column=domain_column)
        self.from_folder = tokenizer is not None

    @classmethod
    def bind(cls, tables: dict[str, Any], tokenizer: Any, description: str) -> type[InMemoryLMDataset]:
        """A subclass serving ``tables`` (``{split: datasets.Dataset}``) with ``tokenizer`` (an object, or None for a folder option)."""
        return type("InMemoryLMDataset", (cls,), {"tables": tables, "tokenizer_object": tokenizer, "description": description})

    def _tokenizer(self):
        if self.from_folder:
            return super()._tokenizer()
        # A copy: giving it a pad token must not change the caller's tokenizer.
        return checked_tokenizer(copy.deepcopy(self.tokenizer_object), "given to distill()")

    def _rows(self) -> dict[str, Any]:
        return dict(self.tables)


def bind_lm_data(value: Any, tokenizer: Any = None) -> tuple[type[InMemoryLMDataset], dict[str, Any], dict[str, Any]]:
    """The language-model family's binder (`anydistill.api.inputs.IN_MEMORY_DATA`): ``value``
    (see `ACCEPTED`) and ``tokenizer`` (a transformers tokenizer or a folder holding one) as
    ``(data-module class, what config.yaml records, the data section's other options)``.

    Raises:
        ValueError: one line saying what was given and what is accepted.
    """
    tables = _tables(value)
    options: dict[str, Any] = {}
    if tokenizer is None:
        raise ValueError("tokenizer: the text needs its tokenizer; pass tokenizer= (a transformers tokenizer or its folder), "
                         "or give the teacher as its folder (whose tokenizer is used).")
    if isinstance(tokenizer, str | os.PathLike):
        options["tokenizer"], tokenizer_record, tokenizer = str(tokenizer), str(tokenizer), None
    elif _is_tokenizer(tokenizer):
        from anydistill.data.tokenizers import tokenizer_fingerprint

        tokenizer_record = {"class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}", "ids": len(tokenizer),
                            **({"fingerprint": tokenizer_fingerprint(tokenizer)} if getattr(tokenizer, "is_fast", False) else {})}
    else:
        raise ValueError(f"tokenizer: got {type(tokenizer).__name__}; give a transformers tokenizer (AutoTokenizer.from_pretrained(...)) "
                         "or the folder it was saved to.")
    splits = ", ".join(f"{name} {len(table)} rows" for name, table in tables.items())
    description = f"in-memory {type(value).__name__} ({splits})"
    record = {"class": f"{type(value).__module__}.{type(value).__qualname__}", "rows": splits,
              "fingerprint": _fingerprint(tables), "tokenizer": tokenizer_record}
    return InMemoryLMDataset.bind(tables, tokenizer, description), record, options


def _is_tokenizer(value: Any) -> bool:
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:
        return False
    return isinstance(value, PreTrainedTokenizerBase)


def _tables(value: Any) -> dict[str, Any]:
    """``{split: datasets.Dataset}`` of what the caller passed (see `ACCEPTED`)."""
    import datasets

    datasets.disable_progress_bars()
    if isinstance(value, datasets.DatasetDict) or (isinstance(value, dict) and value and set(value) <= {k for ks in SPLIT_KEYS.values() for k in ks}):
        found = {split: next((value[k] for k in keys if k in value), None) for split, keys in SPLIT_KEYS.items()}
        if found["train"] is None:
            raise ValueError(f"data: the {type(value).__name__} has no 'train' split (splits: {', '.join(value)}); name the training rows 'train'.")
        return {split: _table(rows, split) for split, rows in found.items() if rows is not None}
    return {"train": _table(value, "train")}


def _table(rows: Any, split: str) -> Any:
    import datasets

    if isinstance(rows, datasets.Dataset):
        return _nonempty(rows, split)
    documents = isinstance(rows, list | tuple) and rows and all(isinstance(r, str) for r in rows)
    columns = isinstance(rows, dict) and any(column in rows for names in FORMAT_COLUMNS.values() for column in names)
    records = isinstance(rows, list | tuple) and rows and all(isinstance(r, dict) for r in rows)
    if not (documents or columns or records):
        got = "an empty list" if isinstance(rows, list | tuple) and not rows else type(rows).__name__
        raise ValueError(f"data: got {got}; the language-model methods accept {ACCEPTED}.")
    try:
        table = (datasets.Dataset.from_dict({"text": list(rows)}) if documents else
                 datasets.Dataset.from_dict(rows) if columns else datasets.Dataset.from_list(list(rows)))
    except (ValueError, TypeError, ArithmeticError) as error:  # Arrow's errors on ragged or mixed rows: one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"data: the {split} rows do not form one table ({first}); give every row the same keys and value types.") from None
    return _nonempty(table, split)


def _nonempty(table: Any, split: str) -> Any:
    if len(table) == 0:
        raise ValueError(f"data: the {split} split has no rows; give at least one.")
    return table


def _fingerprint(tables: dict[str, Any]) -> str:
    """SHA-256 of the splits' Arrow data (what config.yaml records of rows that have no file)."""
    import pyarrow as pa

    digest = hashlib.sha256()
    for name, table in sorted(tables.items()):
        sink = pa.BufferOutputStream()
        arrow = table.with_format("arrow")[:]  # the rows as selected (a shuffled or filtered Dataset keeps an index)
        with pa.ipc.new_stream(sink, arrow.schema) as writer:
            writer.write_table(arrow)
        digest.update(name.encode() + sink.getvalue().to_pybytes())
    return digest.hexdigest()
