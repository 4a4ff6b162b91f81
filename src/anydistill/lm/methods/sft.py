"""Training a causal LM on text alone: the ``lm-sft`` baseline and the ``lm-teacher`` trainer.

Both minimise the cross-entropy of the completion tokens, through the same engine and evaluator
as the distillation methods, so a comparison differs only in the objective.
"""

from __future__ import annotations

import torch

from anydistill.core.method import DistillationMethod
from anydistill.lm.common import lm_data_problems, ce_step, lm_validation_step, prepare


class LMSFT(DistillationMethod):
    """The student trained with next-token cross-entropy on the data, without a teacher (the baseline)."""

    family = "lm"
    paper = "baseline: next-token cross-entropy on the data, no teacher"
    needs_teacher = False
    baseline = True

    def setup(self, stage: str) -> None:
        self.vocab = prepare(self)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return ce_step(self, batch)

    validation_step = lm_validation_step
    data_problems = lm_data_problems


class LMTeacher(DistillationMethod):
    """Trains the recipe's *teacher* architecture with next-token cross-entropy; later methods of
    the recipe distill from the result, and it is exported (``save_pretrained``) for other recipes."""

    family = "lm"
    paper = "trains a teacher: next-token cross-entropy on the data"
    needs_teacher = False
    trains = "teacher"

    def setup(self, stage: str) -> None:
        self.vocab = prepare(self)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return ce_step(self, batch)

    validation_step = lm_validation_step
    data_problems = lm_data_problems
