"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anydistill.classifier.common import classifier_validation_step, teacher_signal
from anydistill.classifier.losses import dkd_loss
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import Fraction, NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.space import LogUniform, Uniform
from anydistill.core.teacher import Teacher


class DKD(DistillationMethod):
    """Split the KD loss into target-class (TCKD) and non-target-class (NCKD) parts, weighted
    independently, added to the label loss with a linear warm-up:

        L = CE(z_s, y) + w * (alpha * TCKD + beta * NCKD),   w = min(progress / warmup, 1)

    Args:
        alpha, beta: weights of TCKD and NCKD (paper/mdistiller defaults 1 and 8).
        temperature: T (4 in mdistiller's CIFAR-100 configs).
        warmup: the share of the training schedule over which w ramps linearly to 1, step by step
            (progress = (step + 1) / total steps). The default is mdistiller's 20 of 240 epochs,
            so a 3-epoch run warms up over its first quarter epoch as a 240-epoch run does over 20.
        warmup_epochs: instead of ``warmup``, a ramp per epoch, w = min((epoch + 1) / warmup_epochs, 1),
            mdistiller's own form (1: no warm-up).
    """

    family = "classifier"
    paper = "Zhao et al. 2022, Decoupled Knowledge Distillation (arXiv:2203.08679)"
    # The paper ablates beta from 1 to 10 (8 on CIFAR-100, 0.5 on ImageNet) with alpha 1 and T 1-4.
    search_space = {"alpha": Uniform(0.5, 2.0), "beta": LogUniform(0.5, 10.0), "temperature": LogUniform(1.0, 8.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        alpha: NonNegativeFloat = 1.0,
        beta: NonNegativeFloat = 8.0,
        temperature: PositiveFloat = 4.0,
        warmup: Fraction = 20 / 240,
        warmup_epochs: PositiveInt | None = None,
    ):
        super().__init__(student, teacher, optimizer)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup, self.warmup_epochs = warmup, warmup_epochs

    def warmup_weight(self) -> float:
        """w of the current step (see the class docstring)."""
        if self.warmup_epochs is not None:
            return min((self.current_epoch + 1) / self.warmup_epochs, 1.0)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return min((self.global_step + 1) / max(self.warmup * total, 1.0), 1.0)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student_logits = self.student(batch["x"])
        teacher_logits = teacher_signal(self, batch).logits
        warmup = self.warmup_weight()
        decoupled = dkd_loss(
            student_logits, teacher_logits, batch["y"], alpha=self.alpha, beta=self.beta, temperature=self.temperature
        )
        loss = F.cross_entropy(student_logits.float(), batch["y"]) + warmup * decoupled
        size = batch["y"].shape[0]
        self.log_train("train/dkd", decoupled, size)
        self.log_train("train/warmup", torch.tensor(warmup), size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
