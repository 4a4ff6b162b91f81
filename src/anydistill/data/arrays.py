"""The shared base of the data modules that read users' own files (csv, parquet, image folders,
tensor files, Hugging Face datasets, text): arrays per split -> held-out splits -> labels ->
standardisation. A subclass only reads its files (`read_arrays`); everything else is here.

Unlike the shipped sources, whose ``input_shape`` and ``num_classes`` are class attributes, these
modules know them only once the files are read: they are instance properties (reading on first use).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from anydistill.core.recipe import PositiveInt
from anydistill.data.tensor_data import TensorClassificationData

# A held-out fraction: strictly between 0 and 1 (0 would leave a split empty, 1 the training set).
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
SPLITS = ("train", "val", "test")


def encode_labels(labels: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Class indices int64 per split, from the raw label column of each split.

    Integers (and floats that are whole numbers) are the class indices themselves and must be >= 0;
    strings are mapped to the index of their rank in the sorted set of labels of all splits (so the
    mapping does not depend on which split a label first appears in), returned as ``class_names``.

    Raises:
        ValueError: labels that are fractional floats, negative, missing or of mixed types.
    """
    values = list(labels.values())
    if all(v.dtype.kind in "iub" for v in values):
        encoded = {name: v.astype(np.int64) for name, v in labels.items()}
        names = None
    elif all(v.dtype.kind in "iubf" for v in values):
        if any(np.isnan(v.astype(np.float64)).any() for v in values):
            raise ValueError(f"{where} has missing values; every row needs a class label.")
        fractional = [float(x) for v in values for x in v[v != np.round(v)][:3]]
        if fractional:
            raise ValueError(f"{where} holds non-integer numbers (e.g. {fractional[0]}); class labels must be integers "
                             "or strings. For a regression target, this is not a classification dataset.")
        encoded = {name: v.astype(np.int64) for name, v in labels.items()}
        names = None
    else:
        as_text = {name: v.astype(object) for name, v in labels.items()}
        if any(x is None or (isinstance(x, float) and np.isnan(x)) for v in as_text.values() for x in v):
            raise ValueError(f"{where} has missing values; every row needs a class label.")
        names = sorted({str(x) for v in as_text.values() for x in v})
        index = {name: i for i, name in enumerate(names)}
        encoded = {name: np.array([index[str(x)] for x in v], dtype=np.int64) for name, v in as_text.items()}
    negative = [int(v.min()) for v in encoded.values() if v.size and v.min() < 0]
    if negative:
        raise ValueError(f"{where} has negative labels (e.g. {negative[0]}); integer labels are class indices 0..K-1.")
    return encoded, names


def held_out_split(y: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Row indices per split, drawn per class (stratified) with a generator seeded by ``seed``.

    ``fractions`` maps each held-out split to its share of the rows (e.g. ``{"val": 0.1}``); the
    rest is ``"train"``. Each class gives round(share * its size) rows to each held-out split.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("train", *fractions)}
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for name, share in fractions.items():
            count = int(round(share * len(rows)))
            parts[name].append(rows[start : start + count])
            start += count
        parts["train"].append(rows[start:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``x`` [N, F] per feature, or of ``x`` [N, C, ...] per channel, shaped to
    broadcast against ``x`` (a constant feature gets std 1, so it stays constant instead of NaN)."""
    dims = [0] if x.dim() == 2 else [0, *range(2, x.dim())]
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return mean.squeeze(0), torch.where(std > 0, std, torch.ones_like(std)).squeeze(0)


class ArrayClassificationData(TensorClassificationData):
    """Base of the modules over users' files: ``read_arrays`` gives (inputs, raw labels) for the
    splits that have their own files; the others are carved out of the training rows.

    Contract (what every classifier and dataset-family method reads): after ``setup()``,
    ``split(name)`` is ``(x, y)`` for "train", "val" and "test" with x [N, *input_shape] (float32,
    or int64 token ids for text) and y int64 [N] in [0, num_classes); ``input_shape`` and
    ``num_classes`` are known; ``class_names`` lists the string labels in index order (None when
    the labels were integers); ``normalisation`` is the per-channel mean and std applied.

    Args:
        val_fraction, test_fraction: share of the training rows held out (per class, seeded by
            ``split_seed``) for a split that has no file of its own; ignored for one that has.
        split_seed: the seed of that held-out draw (independent of the shuffling ``seed``).
        standardize: subtract the training split's mean and divide by its std (per feature for
            [N, F] inputs, per channel for [N, C, ...]); the statistics are never fitted on val or test.
        The rest: see `TensorClassificationData`.
    """

    def __init__(
        self,
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
        super().__init__(batch_size, eval_batch_size, shuffle, augment, train_limit, seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.standardize = standardize
        self.class_names: list[str] | None = None
        self.normalisation = {"mean": [0.0], "std": [1.0]}
        self.transform = ""

    # -- what a subclass provides -------------------------------------------------------------

    def read_arrays(self) -> dict[str, tuple[np.ndarray | torch.Tensor, np.ndarray]]:
        """``{"train": (x, labels), ...}`` for the splits that have their own files ("train"
        always); x [N, ...] numeric, labels [N] ints or strings.

        Raises:
            ValueError: one line naming the file, column or folder at fault and the fix.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """What was read, for ``transform`` (part of the teacher signal cache's fingerprint)."""
        return self.__class__.__name__

    # -- shared -------------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(self.split("train")[0].shape[1:])

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        self.setup()
        return self._num_classes

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        arrays = self.read_arrays()
        labels, self.class_names = encode_labels({name: np.asarray(y) for name, (_, y) in arrays.items()},
                                                 f"the label column of {self.__class__.__name__}")
        inputs = {name: torch.as_tensor(np.asarray(x)) for name, (x, _) in arrays.items()}
        missing = {name: share for name, share in (("val", self.val_fraction), ("test", self.test_fraction)) if name not in arrays}
        if missing:
            rows = held_out_split(labels["train"], missing, self.split_seed)
            x, y = inputs.pop("train"), labels.pop("train")
            for name, index in rows.items():
                inputs[name], labels[name] = x[torch.as_tensor(index)], y[index]
        for name in SPLITS:
            if len(labels[name]) == 0:
                raise ValueError(f"{self.__class__.__name__}: the {name} split is empty; give more rows or a larger "
                                 f"{name}_fraction." if name != "train" else f"{self.__class__.__name__}: no training rows.")
        splits = {name: (inputs[name], torch.as_tensor(labels[name])) for name in SPLITS}
        self._num_classes = int(max(int(y.max()) for _, y in splits.values())) + 1
        if self.class_names is not None:
            self._num_classes = max(self._num_classes, len(self.class_names))
        floating = splits["train"][0].is_floating_point()
        if floating:
            splits = {name: (x.float(), y) for name, (x, y) in splits.items()}
        stats = ""
        if self.standardize and floating:
            mean, std = standardiser(splits["train"][0])
            splits = {name: ((x - mean) / std, y) for name, (x, y) in splits.items()}
            if splits["train"][0].dim() > 2:  # per channel: what the dataset family de-normalises with
                self.normalisation = {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}
            stats = f", standardised with train mean/std (sum of means {float(mean.sum()):.6g})"
        fractions = ", ".join(f"{name} {share} held out (split_seed {self.split_seed})" for name, share in missing.items())
        self.transform = f"{self.describe()}{stats}{'; ' + fractions if fractions else ''}"
        return splits

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if not hasattr(self, "_num_classes"):  # set up from splits given directly (tests)
            self._num_classes = int(max(int(y.max()) for _, y in self.splits.values())) + 1


def column_arrays(dataset: Any, features: list[str] | None, label: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(x [N, F] or [N, *shape], labels [N]) from the columns of a Hugging Face ``Dataset``.

    ``features`` None takes every column but ``label``. Scalar numeric columns are stacked side by
    side; a single feature column may instead hold an array per row (a list, or an image).

    Raises:
        ValueError: a missing column (lists those found), a non-numeric feature column, or missing values.
    """
    columns = list(dataset.column_names)
    wanted = [label, *(features or [])]
    absent = [name for name in wanted if name not in columns]
    if absent:
        raise ValueError(f"{where} has no column {', '.join(repr(a) for a in absent)}; its columns are: {', '.join(columns)}. "
                         "Name the label and feature columns with `label:` and `features:`.")
    features = features if features is not None else [c for c in columns if c != label]
    if not features:
        raise ValueError(f"{where} has no feature column besides the label '{label}'.")
    frame = dataset.with_format("numpy")
    first = np.asarray(frame[features[0]]) if len(features) == 1 else None
    if first is not None and (first.dtype == object or first.ndim > 1):  # one array (a list, an image) per row
        x = np.stack([np.asarray(v, dtype=np.float32) for v in first])
    else:
        blocks = []
        for name in features:
            column = first if first is not None else np.asarray(frame[name])
            if column.dtype.kind not in "iubf" or column.ndim != 1:
                raise ValueError(f"{where}: feature column '{name}' is not numeric (e.g. {column[:1].tolist()}); "
                                 "encode it as numbers or leave it out of `features`.")
            blocks.append(column.astype(np.float32))
        x = np.stack(blocks, axis=1)
    if np.isnan(x).any():
        bad = [features[j] for j in np.flatnonzero(np.isnan(x).reshape(len(x), -1).any(0))[:3]] if x.ndim == 2 else features
        raise ValueError(f"{where} has missing values in {', '.join(repr(b) for b in bad)}; fill or drop those rows first.")
    return x, np.asarray(frame[label])
