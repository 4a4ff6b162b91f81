"""A Hugging Face dataset saved on disk (``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``)
or local data files (.csv, .json/.jsonl, .parquet), with the feature and label columns named in the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anydistill.core.recipe import PositiveInt
from anydistill.data.arrays import ArrayClassificationData, OpenFraction, column_arrays
from anydistill.data.tabular import read_table

BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# How a DatasetDict may name our three splits (the Hub's usual names first).
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}


def read_source(path: str, where: str) -> Any:
    """A ``Dataset`` or ``DatasetDict`` from a ``save_to_disk`` folder, or a ``Dataset`` from one file.

    Raises:
        ValueError: a missing path, a folder that is not a saved dataset, an unknown file type.
    """
    import datasets

    source = Path(path)
    if source.is_dir():
        try:
            return datasets.load_from_disk(str(source), keep_in_memory=True)
        except FileNotFoundError:
            raise ValueError(f"{where}: '{path}' is a folder but not a dataset written by save_to_disk; give such a folder "
                             f"or a data file ({', '.join(BUILDERS)}).") from None
    if source.suffix.lower() not in BUILDERS:
        hint = "no such file or folder" if not source.exists() else f"unknown file type '{source.suffix}'"
        raise ValueError(f"{where}: {hint} '{path}'; give a save_to_disk folder or a data file ({', '.join(BUILDERS)}).")
    return read_table(BUILDERS[source.suffix.lower()], path, where)


def source_splits(train: str, val: str | None, test: str | None) -> dict[str, Any]:
    """The splits found: a DatasetDict's own (``validation``/``val``/``valid``/``dev`` is "val"),
    or the ``train`` source as "train"; ``val`` and ``test`` sources replace what it holds.

    Raises:
        ValueError: a DatasetDict without a "train" split (lists its splits), or a read error.
    """
    import datasets

    found: dict[str, Any] = {}
    main = read_source(train, "data.path")
    if isinstance(main, datasets.DatasetDict):
        for name, aliases in SPLIT_NAMES.items():
            for alias in aliases:
                if alias in main:
                    found[name] = main[alias]
                    break
        if "train" not in found:
            raise ValueError(f"data.path: the DatasetDict at '{train}' has no 'train' split; its splits are: {', '.join(main)}.")
    else:
        found["train"] = main
    for name, path in (("val", val), ("test", test)):
        if path is not None:
            other = read_source(path, f"data.{name}")
            found[name] = other if isinstance(other, datasets.Dataset) else other[next(iter(other))]
    return found


class HFDatasetData(ArrayClassificationData):
    """Feature and label columns of a saved Hugging Face dataset or of local data files.

    Args:
        path: a ``save_to_disk`` folder (a Dataset, or a DatasetDict whose train/validation/test
            splits are used) or a .csv/.json/.jsonl/.parquet file.
        label: the label column (integers, or strings mapped to sorted indices).
        features: numeric feature columns, stacked in this order; or one column holding an array
            per row (lists, images). Default: every column but the label.
        val, test: separate sources for those splits; when a split is found nowhere it is
            ``val_fraction`` / ``test_fraction`` of the training rows.
        The rest: see `ArrayClassificationData`.
    """

    def __init__(
        self,
        path: str,
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
        augment: bool = False,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
        labelled_count: PositiveInt | None = None,
        labelled_seed: int = 0,
    ):
        super().__init__(val_fraction, test_fraction, split_seed, standardize, batch_size, eval_batch_size, shuffle, augment,
                         train_limit, seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.path, self.val, self.test = path, val, test
        self.label, self.features = label, features

    def describe(self) -> str:
        return f"hf-dataset {self.path} (val {self.val}, test {self.test}) features {self.features or 'all'} label {self.label!r}"

    def read_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        splits = source_splits(self.path, self.val, self.test)
        arrays = {name: column_arrays(dataset, self.features, self.label, f"data ({name} split of '{self.path}')")
                  for name, dataset in splits.items()}
        shapes = {name: list(x.shape[1:]) for name, (x, _) in arrays.items()}
        if len({str(s) for s in shapes.values()}) > 1:
            raise ValueError(f"the splits' inputs have different shapes per row ({shapes}); give the same columns in every split.")
        return arrays
