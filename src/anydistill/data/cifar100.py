"""CIFAR-100 from the official python release (Krizhevsky 2009), read from a local folder."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from anydistill.core.errors import DataNotFoundError
from anydistill.core.recipe import PositiveInt
from anydistill.data.tensor_data import TensorClassificationData, balanced_subset

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def read_cifar100_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One file of the python release: images uint8 [N, 3, 32, 32] and fine labels int64 [N].

    Each file is a pickled dict whose ``b"data"`` rows hold 3072 bytes, the red, green and blue
    32x32 planes one after the other (hence the reshape to channels first).
    """
    with path.open("rb") as handle:
        # The release is a pickle written by Python 2; only open files you downloaded yourself.
        entry = pickle.load(handle, encoding="bytes")
    images = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(entry[b"fine_labels"], dtype=np.int64)


class CIFAR100Data(TensorClassificationData):
    """CIFAR-100 as 3x32x32 images with 100 classes, normalised per channel with the usual mean
    (0.5071, 0.4865, 0.4409) and std (0.2673, 0.2564, 0.2762).

    Splits: ``val_count`` (5,000) of the official 50,000 training images, the same number per
    class (a fixed draw, seed 0, independent of the run's seed), are held out for validation and
    the other 45,000 trained on; the test split is the official 10,000. RepDistiller (Tian et al.,
    2020) trains on all 50,000 and reports test accuracy, with no validation split; holding out
    5,000 means tuning and checkpoint selection never read the test images.

    Augmentation (``augment: true``) is the standard CIFAR one: a random 32x32 crop of the image
    padded by 4 pixels, then a random left-right flip. One deviation from torchvision's
    ``RandomCrop(32, padding=4)``: the padding is zero in normalised space (the mean colour), where
    torchvision pads raw zeros (black) before normalising.

    Args:
        root: the extracted ``cifar-100-python`` folder (its ``train`` and ``test`` files are read;
            a relative path is taken from the working directory). Nothing is downloaded.
        val_count: training images held out for validation (fewer than the training images).
        The other arguments are `TensorClassificationData`'s.
    """

    input_shape = (3, 32, 32)
    num_classes = 100
    transform = f"pixels in [0,1], (x - {list(CIFAR100_MEAN)}) / {list(CIFAR100_STD)} per channel"
    normalisation = {"mean": list(CIFAR100_MEAN), "std": list(CIFAR100_STD)}
    augment_shift = 4
    augment_flip = True

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
        root: str = "data/cifar-100-python",
        val_count: PositiveInt = 5000,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, augment, train_limit, seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.root, self.val_count = Path(root).expanduser(), val_count

    def _normalised(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, 3, 32, 32] -> float32 normalised per channel (in place, to keep one copy)."""
        x = torch.from_numpy(images).float().div_(255)
        x.sub_(torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)).div_(torch.tensor(CIFAR100_STD).view(1, 3, 1, 1))
        return x

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        for name in ("train", "test"):
            if not (self.root / name).is_file():
                raise DataNotFoundError(f"CIFAR-100 not found: no file '{self.root / name}'. Download {CIFAR100_URL} and extract it "
                                 f"so that {self.root}/train exists, or set data.root to the extracted cifar-100-python folder.")
        train_images, train_labels = read_cifar100_file(self.root / "train")
        test_images, test_labels = read_cifar100_file(self.root / "test")
        if self.val_count >= len(train_labels):
            raise ValueError(f"data.val_count={self.val_count} holds out every training image; give fewer than {len(train_labels)}.")
        x, y = self._normalised(train_images), torch.from_numpy(train_labels)
        held_out = torch.zeros(len(y), dtype=torch.bool)
        held_out[balanced_subset(y, self.val_count, self.num_classes, seed=0)] = True
        return {
            "train": (x[~held_out], y[~held_out]),
            "val": (x[held_out], y[held_out]),
            "test": (self._normalised(test_images), torch.from_numpy(test_labels)),
        }
