"""MNIST-1D (Greydanus 2020): ten 1-D digit templates, padded, scaled, translated, sheared and noised
into signals of length 40; generated on the fly by the PyPI package `mnist1d` (nothing is downloaded)."""

from __future__ import annotations

import random

import numpy as np
import torch

from anydistill.core.errors import MissingPackageError
from anydistill.core.recipe import PositiveInt
from anydistill.data.sklearn_tables import stratified_split
from anydistill.data.tensor_data import TensorClassificationData


def _generator():
    """mnist1d's ``(make_dataset, get_dataset_args)``; never its ``get_dataset``, which downloads a pickle."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError as error:
        missing = (error.name or "mnist1d").split(".")[0]
        if missing == "mnist1d":
            raise MissingPackageError("mnist1d", "mnist1d", "The MNIST-1D data") from None
        raise MissingPackageError(missing, missing, "The MNIST-1D data (mnist1d imports it)") from None
    return make_dataset, get_dataset_args


def make_mnist1d_arrays() -> dict[str, np.ndarray]:
    """mnist1d's ``make_dataset(get_dataset_args())``: ``x`` [4000, 40] and ``x_test`` [1000, 40]
    float64, ``y`` and ``y_test`` int64 (seed 42 of the default arguments; about a second).

    The generator reseeds Python's and NumPy's global random state; both are restored afterwards,
    so that loading the data does not change what a run draws later.
    """
    make_dataset, get_dataset_args = _generator()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class MNIST1DData(TensorClassificationData):
    """MNIST-1D as 1x40 signals (channels first, for 1-D convolutions), 10 classes: 3,601 train /
    399 validation / 1,000 test rows.

    The signals are those of ``mnist1d.data.make_dataset`` with the package's default arguments
    (5,000 signals, seed 42, 80 % / 20 % train / test, standardised by the generator to mean 0 and
    std 1 over all of them), regenerated locally (this is not the published ``mnist1d_data.pkl``,
    which `get_dataset` would download). The validation split is 10 % of the generator's training
    rows, drawn per class with ``split_seed`` (independent of the run's seed), rounded per class.

    Args:
        split_seed: seed of the stratified validation draw.
        The other arguments are `TensorClassificationData`'s (``augment`` shifts images, so it is
        not offered here).
    """

    input_shape = (1, 40)
    num_classes = 10
    val_fraction = 0.1
    transform = "mnist1d.make_dataset(get_dataset_args()) signals (seed 42, standardised by the generator)"

    @classmethod
    def missing_package(cls) -> str | None:
        try:
            _generator()
        except MissingPackageError as error:
            return str(error)
        return None

    def __init__(
        self,
        batch_size: PositiveInt = 128,
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
        arrays = make_mnist1d_arrays()
        x = torch.tensor(arrays["x"], dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(arrays["y"], dtype=torch.long)
        rows = stratified_split(y, (self.val_fraction, 0.0), self.split_seed)
        x_test = torch.tensor(arrays["x_test"], dtype=torch.float32).unsqueeze(1)
        return {"train": (x[rows["train"]], y[rows["train"]]), "val": (x[rows["val"]], y[rows["val"]]),
                "test": (x_test, torch.tensor(arrays["y_test"], dtype=torch.long))}
