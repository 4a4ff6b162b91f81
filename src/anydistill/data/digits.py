"""scikit-learn's 8x8 handwritten digits (1,797 images), split deterministically."""

from __future__ import annotations

import torch

from anydistill.data.tensor_data import TensorClassificationData


class DigitsData(TensorClassificationData):
    """``sklearn.datasets.load_digits``: 1,257 train / 180 validation / 360 test images of 1x8x8.

    The split is a fixed permutation (seed 0), independent of the run's seed. Pixels (0..16) are
    scaled to [0, 1] and standardised with the mean and std of the training split.
    """

    input_shape = (1, 8, 8)
    num_classes = 10
    transform = "pixels/16, standardised with train mean 0.3060 std 0.3763"
    normalisation = {"mean": [0.3060], "std": [0.3763]}

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).view(-1, *self.input_shape) / 16.0
        x = (x - 0.3060) / 0.3763
        y = torch.tensor(labels, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        test, val, train = order[:360], order[360:540], order[540:]
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
