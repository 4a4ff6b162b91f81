"""Small tabular classification sets shipped with scikit-learn (wine, breast cancer), split
deterministically into train / validation / test with the class proportions kept in each."""

from __future__ import annotations

from typing import ClassVar

import torch

from anydistill.core.recipe import PositiveInt
from anydistill.data.tensor_data import TensorClassificationData


def stratified_split(y: torch.Tensor, fractions: tuple[float, float], seed: int) -> dict[str, torch.Tensor]:
    """Row indices of ``y`` [N] for "train", "val", "test": within each class a seeded permutation,
    the first ``fractions[1]`` of it to test, the next ``fractions[0]`` to validation, the rest to train.

    Stratifying per class keeps rare classes in every split, which a plain permutation of 178 rows
    (wine) does not guarantee.
    """
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for label in y.unique().tolist():
        rows = (y == label).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_test, n_val = round(len(rows) * fractions[1]), round(len(rows) * fractions[0])
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    return {name: torch.cat(chunks).sort().values for name, chunks in parts.items()}


class SklearnTableData(TensorClassificationData):
    """A scikit-learn table as float32 feature vectors [N, F], standardised with the mean and std
    of the training split only (so nothing of validation or test leaks into the inputs).

    Args:
        split_seed: seed of the stratified split (independent of the run's seed, so that every
            run of a study sees the same rows).
        val_fraction, test_fraction are class attributes: 20% each, 60% train.
        The other arguments are `TensorClassificationData`'s.
    """

    loader: ClassVar[str] = ""
    val_fraction: ClassVar[float] = 0.2
    test_fraction: ClassVar[float] = 0.2
    transform = "features standardised with the training split's mean and std"

    def __init__(
        self,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 1024,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
        labelled_count: PositiveInt | None = None,
        labelled_seed: int = 0,
        split_seed: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, shuffle=shuffle, augment=False,
                         train_limit=train_limit, seed=seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.split_seed = split_seed

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        import sklearn.datasets

        features, labels = getattr(sklearn.datasets, self.loader)(return_X_y=True)
        x = torch.tensor(features, dtype=torch.float32)
        y = torch.tensor(labels, dtype=torch.long)
        rows = stratified_split(y, (self.val_fraction, self.test_fraction), self.split_seed)
        mean, std = x[rows["train"]].mean(0), x[rows["train"]].std(0).clamp_min(1e-6)
        x = (x - mean) / std
        return {name: (x[index], y[index]) for name, index in rows.items()}


class WineData(SklearnTableData):
    """``sklearn.datasets.load_wine``: 178 wines, 13 chemical features, 3 cultivars (106/36/36 rows)."""

    loader = "load_wine"
    input_shape = (13,)
    num_classes = 3


class BreastCancerData(SklearnTableData):
    """``sklearn.datasets.load_breast_cancer``: 569 tumours, 30 features, malignant or benign (343/113/113 rows)."""

    loader = "load_breast_cancer"
    input_shape = (30,)
    num_classes = 2
