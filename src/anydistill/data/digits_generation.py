"""scikit-learn's 8x8 digits for generation: pixels scaled to [-1, 1], the fixed split of `DigitsData`."""

from __future__ import annotations

import torch

from anydistill.data.tensor_data import TensorClassificationData


class DigitsGenerationData(TensorClassificationData):
    """``sklearn.datasets.load_digits`` as 1x8x8 images in [-1, 1] (``pixels / 8 - 1``), with labels.

    1,257 train / 180 validation / 360 test images, the same fixed permutation (seed 0) as
    `anydistill.data.digits.DigitsData`, so a classifier trained on one split never saw the other's
    images. Generators see the data range diffusion models are built for (DDPM's [-1, 1]).
    """

    input_shape = (1, 8, 8)
    num_classes = 10
    transform = "pixels / 8 - 1 (range [-1, 1])"
    normalisation = {"mean": [-0.388], "std": [0.753]}  # of the training split, for reference

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        shuffle: bool = True,
        train_limit: int | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, False, train_limit, seed)

    @property
    def name(self) -> str:
        return "digits"

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).view(-1, *self.input_shape) / 8.0 - 1.0
        y = torch.tensor(labels, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        test, val, train = order[:360], order[360:540], order[540:]
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
