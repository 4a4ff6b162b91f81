"""Users' labelled text: a text column and a label column, tokenized with the teacher's tokenizer
(a local folder) into padded ``input_ids``, the models' input x."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from anydistill.core.recipe import PositiveInt
from anydistill.core.errors import first_line
from anydistill.data.arrays import ArrayClassificationData, OpenFraction
from anydistill.data.hf_dataset import source_splits


def load_local_tokenizer(path: str, where: str) -> Any:
    """``AutoTokenizer.from_pretrained(path, local_files_only=True)`` with a pad token.

    Raises:
        ValueError: no such folder, no tokenizer in it, or a tokenizer without a pad token.
    """
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise ValueError(f"{where}: no such folder '{path}'; point it at the teacher's folder (written by save_pretrained).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = first_line(error)
        raise ValueError(f"{where}: no tokenizer could be loaded from '{path}' ({first}); save one there with "
                         "tokenizer.save_pretrained(path).") from None
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{where}: the tokenizer in '{path}' has no pad token; set one (tokenizer.pad_token = ...) and save it again.")
    return tokenizer


class TextClassificationData(ArrayClassificationData):
    """Labelled texts as token ids: x int64 [N, L] padded with the tokenizer's pad id (the models
    mask ``x != pad_id``), where L is the longest tokenized text, at most ``max_length``.

    Args:
        path: a ``save_to_disk`` folder (Dataset or DatasetDict with train/validation/test) or a
            .csv/.json/.jsonl/.parquet file.
        tokenizer: the folder of the teacher's tokenizer (``save_pretrained``); the student must
            use the same vocabulary.
        text, label: the text column and the label column (integers or strings).
        max_length: texts are truncated to this many tokens (special tokens included).
        val, test: separate sources for those splits; when a split is found nowhere it is
            ``val_fraction`` / ``test_fraction`` of the training rows (per class, seeded).
        The rest: see `ArrayClassificationData` (token ids are never standardised).
    """

    def __init__(
        self,
        path: str,
        tokenizer: str,
        text: str = "text",
        label: str = "label",
        max_length: PositiveInt = 128,
        val: str | None = None,
        test: str | None = None,
        val_fraction: OpenFraction = 0.1,
        test_fraction: OpenFraction = 0.2,
        split_seed: int = 0,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 256,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
        labelled_count: PositiveInt | None = None,
        labelled_seed: int = 0,
    ):
        super().__init__(val_fraction, test_fraction, split_seed, False, batch_size, eval_batch_size, shuffle, False, train_limit, seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.path, self.val, self.test = path, val, test
        self.tokenizer_path, self.text, self.label, self.max_length = tokenizer, text, label, max_length
        self.pad_id: int | None = None

    def describe(self) -> str:
        return f"text {self.path} column {self.text!r} label {self.label!r}, tokenizer {self.tokenizer_path} max_length {self.max_length}"

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        tokenizer = load_local_tokenizer(self.tokenizer_path, "data.tokenizer")
        self.pad_id = int(tokenizer.pad_token_id)
        splits = source_splits(self.path, self.val, self.test)
        encoded = {}
        for name, dataset in splits.items():
            absent = [c for c in (self.text, self.label) if c not in dataset.column_names]
            if absent:
                raise ValueError(f"data ({name} split of '{self.path}') has no column {', '.join(repr(a) for a in absent)}; its columns "
                                 f"are: {', '.join(dataset.column_names)}. Name them with `text:` and `label:`.")
            texts = list(dataset[self.text])
            if not all(isinstance(t, str) for t in texts):
                raise ValueError(f"data ({name} split): column '{self.text}' must hold strings; got {type(next(t for t in texts if not isinstance(t, str))).__name__}.")
            ids = tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
            encoded[name] = (ids, np.asarray(dataset.with_format("numpy")[self.label]))
        # One length for all splits, so every split has the input_shape the models were built for.
        length = max(len(row) for ids, _ in encoded.values() for row in ids)
        arrays = {}
        for name, (ids, labels) in encoded.items():
            x = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
            for i, row in enumerate(ids):
                x[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            arrays[name] = (x, labels)
        return arrays
