"""Two-dimensional toy point clouds as data modules, for diffusion and flow distillation.

The points come from `anydistill.data.toy2d_distributions`; every split is drawn once from its own generator
(seeded by ``data_seed`` and the split's name), so the train, validation and test samples are the
same in every run, whatever the run's seed. Batches are the zoo's usual dicts ``{"x" [B, 2],
"y" [B], "index" [B]}``: ``y`` is the class of the class-conditional mixture (`Toy2DConditionalData`)
and 0 for the unconditional distributions (`Toy2DData`, whose models ignore it).
"""

from __future__ import annotations

from typing import Literal

import torch

from anydistill.core.recipe import PositiveInt
from anydistill.data.tensor_data import TensorClassificationData
from anydistill.data.toy2d_distributions import CLASS_MIXTURE_NUM_CLASSES, LABELLED, TOY2D

Distribution = Literal["eight_gaussians", "twenty_five_gaussians", "checkerboard", "two_moons", "swiss_roll"]

# A different stream per split: test points are never training points drawn again.
_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


class Toy2DData(TensorClassificationData):
    """One unconditional 2-D distribution, chosen by name (``anydistill.data.toy2d_distributions.TOY2D``).

    Args:
        distribution: ``eight_gaussians``, ``twenty_five_gaussians``, ``checkerboard``,
            ``two_moons`` or ``swiss_roll``.
        num_train, num_val, num_test: points per split.
        data_seed: seeds the draws of the splits (not the run's seed: the data stay fixed).
        batch_size, eval_batch_size, shuffle, train_limit, seed: as in `TensorClassificationData`.
    """

    input_shape = (2,)
    num_classes = 0
    transform = "raw 2-D points"
    normalisation = {"mean": [0.0, 0.0], "std": [1.0, 1.0]}

    def __init__(
        self,
        distribution: Distribution = "eight_gaussians",
        num_train: PositiveInt = 20000,
        num_val: PositiveInt = 2000,
        num_test: PositiveInt = 5000,
        data_seed: int = 0,
        batch_size: PositiveInt = 512,
        eval_batch_size: PositiveInt = 4096,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, False, train_limit, seed)
        if distribution not in TOY2D:
            raise ValueError(f"The 'distribution' parameter of Toy2DData must be one of {sorted(TOY2D)}. Got {distribution!r}.")
        self.distribution = distribution
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.data_seed = data_seed

    @property
    def name(self) -> str:
        """The distribution's name (the evaluator looks up its modes with it)."""
        return self.distribution

    def _generator(self, split: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.data_seed * 10 + _SPLIT_OFFSETS[split])

    def draw(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, 2] float32, y [n] int64)`` of one split."""
        return self._draw_n(self.sizes[split], self._generator(split))

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fresh points of the true distribution (and labels) from ``seed``: a reference sample
        that shows how far an exact sampler of the same size lies from the test split."""
        return self._draw_n(n, torch.Generator().manual_seed(1_000_003 + seed))

    def _draw_n(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return TOY2D[self.distribution](n, generator), torch.zeros(n, dtype=torch.long)

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {split: self.draw(split) for split in _SPLIT_OFFSETS}

    def fingerprint(self, name: str = "train") -> str:
        return f"{self.distribution}:{super().fingerprint(name)}"


class Toy2DConditionalData(Toy2DData):
    """A class-conditional mixture of `anydistill.data.toy2d_distributions` with its labels (for
    classifier-free guidance): ``class_conditional_mixture``, 8 Gaussians on a ring, one per class, or
    ``class_submode_mixture``, the same classes made of 4 tight sub-modes each (within-class diversity).

    Args: as `Toy2DData`, with ``distribution`` one of the two.
    """

    num_classes = CLASS_MIXTURE_NUM_CLASSES

    def __init__(
        self,
        distribution: Literal["class_conditional_mixture", "class_submode_mixture"] = "class_conditional_mixture",
        num_train: PositiveInt = 20000,
        num_val: PositiveInt = 2000,
        num_test: PositiveInt = 5000,
        data_seed: int = 0,
        batch_size: PositiveInt = 512,
        eval_batch_size: PositiveInt = 4096,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__("eight_gaussians", num_train, num_val, num_test, data_seed, batch_size, eval_batch_size,
                         shuffle, train_limit, seed)
        if distribution not in LABELLED:
            raise ValueError(f"The 'distribution' parameter of Toy2DConditionalData must be one of {sorted(LABELLED)}. Got {distribution!r}.")
        self.distribution = distribution

    def _draw_n(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return LABELLED[self.distribution](n, generator, self.num_classes)
