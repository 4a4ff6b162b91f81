"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features
from anydistill.classifier.losses import attention_transfer_loss
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import Fraction, NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import Choice, LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl, mix_with_ce


class AttentionTransfer(DistillationMethod):
    """Make the student's spatial attention maps match the teacher's at paired layers:

        L = L_task + beta * sum_j mean( (Q_s^j / ||Q_s^j|| - Q_t^j / ||Q_t^j||)^2 ),
        Q = mean_c |F_c|^p  (flattened per example),

    as in the official code (``cifar.py``: ``distillation(...) + opt.beta * sum(at_losses)``,
    beta = 1000), where L_task is the cross-entropy, or Hinton KD mixed with it when ``alpha > 0``
    (the paper's AT+KD rows). The paper writes beta/2 times a (non-squared) norm instead.

    Args:
        teacher_layers, student_layers: paired module paths (same length); feature maps [B, C, H, W].
        beta: weight of the attention term (the sum over layer pairs).
        p: exponent of the attention map.
        alpha, temperature: weight of an optional KD term (0 disables it) and its temperature.
    """

    family = "classifier"
    paper = "Zagoruyko & Komodakis 2017, Paying More Attention to Attention (arXiv:1612.03928)"
    # beta = 1000 in the official code, the paper compares p in {1, 2, 4}.
    search_space = {"beta": LogUniform(10.0, 10000.0), "p": Choice((1.0, 2.0, 4.0))}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        student_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        beta: NonNegativeFloat = 1000.0,
        p: PositiveFloat = 2.0,
        alpha: Fraction = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers):
            raise ValueError(
                f"attention-transfer pairs layers one to one: teacher_layers has {len(teacher_layers)} "
                f"entries but student_layers has {len(student_layers)}."
            )
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.beta, self.p, self.alpha, self.temperature = beta, p, alpha, temperature

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        shapes = [("teacher", p, teacher_shapes[p]) for p in self.teacher_layers]
        shapes += [("student", p, student_shapes[p]) for p in self.student_layers]
        return [
            f"attention-transfer needs [B, C, H, W] feature maps, but the {role} layer '{path}' gives {tuple(shape)}."
            for role, path, shape in shapes
            if len(shape) != 4
        ]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, student_features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
        at = sum(
            attention_transfer_loss(student_features[s], signal.features[t], p=self.p)
            for s, t in zip(self.student_layers, self.teacher_layers)
        )
        if self.alpha > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            task = mix_with_ce(soft, student_logits, batch["y"], alpha=self.alpha)
        else:
            task = F.cross_entropy(student_logits.float(), batch["y"])
        loss = task + self.beta * at
        size = batch["y"].shape[0]
        self.log_train("train/at", at, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
