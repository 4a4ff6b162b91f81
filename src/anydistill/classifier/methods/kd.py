"""Knowledge distillation (Hinton, Vinyals & Dean, 2015)."""

from __future__ import annotations

import torch
from torch import nn

from anydistill.classifier.common import classifier_validation_step, teacher_signal
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import Fraction, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform, Uniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl, mix_with_ce


class KD(DistillationMethod):
    """Match the teacher's temperature-softened class distribution, mixed with the label loss:

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

    Args:
        temperature: T, the softening temperature (the T^2 factor keeps gradient scales comparable).
        alpha: weight of the soft (teacher) term; 1 - alpha weights the hard-label cross-entropy.
    """

    family = "classifier"
    paper = "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network (arXiv:1503.02531)"
    # Hinton et al. report temperatures from 1 to 20 working, best around 2-8; alpha weights the soft term.
    search_space = {"temperature": LogUniform(1.0, 10.0), "alpha": Uniform(0.1, 0.95)}
    unlabelled = True  # Hinton et al.'s transfer set: the soft term needs no label

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        temperature: PositiveFloat = 4.0,
        alpha: Fraction = 0.9,
    ):
        super().__init__(student, teacher, optimizer)
        self.temperature = temperature
        self.alpha = alpha

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student_logits = self.student(batch["x"])
        teacher_logits = teacher_signal(self, batch).logits
        soft = kd_kl(student_logits, teacher_logits, temperature=self.temperature)
        loss = mix_with_ce(soft, student_logits, batch["y"], alpha=self.alpha)
        size = batch["y"].shape[0]
        self.log_train("train/loss", loss, size, prog_bar=True)
        self.log_train("train/kd", soft, size)
        return loss

    validation_step = classifier_validation_step
