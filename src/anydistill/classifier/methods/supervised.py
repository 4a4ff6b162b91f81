"""Training from labels alone: the `scratch` baseline and the `teacher` trainer.

Both run through the same engine and evaluator as the distillation methods, so a comparison
differs only in the objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anydistill.classifier.common import classifier_validation_step
from anydistill.core.method import DistillationMethod


def _cross_entropy_step(method: DistillationMethod, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = F.cross_entropy(method.student(batch["x"]).float(), batch["y"])
    method.log_train("train/loss", loss, batch["y"].shape[0], prog_bar=True)
    return loss


class Scratch(DistillationMethod):
    """The student trained with cross-entropy on the labels, without a teacher (the baseline)."""

    family = "classifier"
    paper = "baseline: cross-entropy on labels, no teacher"
    needs_teacher = False
    baseline = True
    search_space: dict = {}  # only the shared optimizer settings (core.space.OPTIMIZER_SPACE)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return _cross_entropy_step(self, batch)

    validation_step = classifier_validation_step


class TrainTeacher(DistillationMethod):
    """Trains the recipe's *teacher* architecture with cross-entropy; later methods of the same
    recipe distill from the result, and its weights are exported for other recipes."""

    family = "classifier"
    paper = "trains a teacher: cross-entropy on labels"
    needs_teacher = False
    trains = "teacher"
    search_space: dict = {}  # only the shared optimizer settings (core.space.OPTIMIZER_SPACE)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return _cross_entropy_step(self, batch)

    validation_step = classifier_validation_step
