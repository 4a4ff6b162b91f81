"""Users' tables: ``csv`` and ``parquet`` files, one row per example, read with Hugging Face
``datasets`` (``load_dataset("csv" | "parquet", data_files=...)``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from anydistill.core.recipe import PositiveInt
from anydistill.core.errors import first_line
from anydistill.data.arrays import ArrayClassificationData, OpenFraction, column_arrays


def read_table(builder: str, path: str, where: str) -> Any:
    """The ``datasets.Dataset`` of one file, read by the packaged ``builder`` ("csv", "json", "parquet").

    The Arrow cache goes to a temporary folder removed afterwards: reading a user's file leaves
    nothing behind (the tensors are kept in memory).

    Raises:
        ValueError: the file does not exist or cannot be parsed.
    """
    import datasets

    if not Path(path).is_file():
        raise ValueError(f"{where}: no such file '{path}'. Give the path of a .{builder} file (relative to where you run anydistill).")
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="anydistill-read-") as cache:
        try:
            table = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True)
        except Exception as error:  # noqa: BLE001 - pandas/arrow raise many types; all mean "not a readable file"
            first = first_line(error)
            raise ValueError(f"{where}: cannot read '{path}' as {builder}: {first}") from None
    return table


class TableData(ArrayClassificationData):
    """Feature columns and a label column of a table; per-split files or held-out fractions.

    Args:
        train: the training file; ``val`` and ``test`` files are optional (when absent, that
            split is ``val_fraction`` / ``test_fraction`` of the training rows, per class, seeded).
        label: the label column: integers (class indices) or strings (mapped to their index in
            sorted order, kept as ``class_names``); fractional numbers are refused.
        features: the feature columns (numeric), in this order; default: every column but the label.
        The rest: see `ArrayClassificationData` (standardisation is fitted on the training rows).
    """

    builder: ClassVar[str] = ""

    def __init__(
        self,
        train: str,
        label: str = "label",
        features: list[str] | None = None,
        val: str | None = None,
        test: str | None = None,
        val_fraction: OpenFraction = 0.1,
        test_fraction: OpenFraction = 0.2,
        split_seed: int = 0,
        standardize: bool = True,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1024,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
        labelled_count: PositiveInt | None = None,
        labelled_seed: int = 0,
    ):
        super().__init__(val_fraction, test_fraction, split_seed, standardize, batch_size, eval_batch_size, shuffle, False,
                         train_limit, seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.files = {name: path for name, path in (("train", train), ("val", val), ("test", test)) if path is not None}
        self.label, self.features = label, features

    def describe(self) -> str:
        return f"{self.builder} {self.files} features {self.features or 'all but ' + repr(self.label)} label {self.label!r}"

    def read_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        arrays = {}
        for name, path in self.files.items():
            table = read_table(self.builder, path, f"data.{name}")
            arrays[name] = column_arrays(table, self.features, self.label, f"data.{name} '{path}'")
        widths = {name: x.shape[1:] for name, (x, _) in arrays.items()}
        if len(set(widths.values())) > 1:
            raise ValueError(f"the files have different feature columns ({widths}); give the same columns in every split.")
        return arrays


class CSVData(TableData):
    __doc__ = "Comma-separated files with a header row. " + (TableData.__doc__ or "")
    builder = "csv"


class ParquetData(TableData):
    __doc__ = "Parquet files. " + (TableData.__doc__ or "")
    builder = "parquet"
