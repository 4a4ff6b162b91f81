"""FitNets: hints for thin deep nets (Romero et al., ICLR 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, teacher_signal
from anydistill.classifier.losses import hint_loss
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, NonNegativeInt, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.taps import capture_features
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def build_regressor(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """The regressor r mapping the guided layer's output onto the hint layer's shape.

    Conv maps [B, Cs, Hs, Ws] -> [B, Ct, Ht, Wt] use the paper's convolutional regressor, whose
    kernel (Hs - Ht + 1, Ws - Wt + 1) makes the spatial sizes agree without padding; flat
    features [B, Ds] -> [B, Dt] use a linear regressor, and token features [B, L, Ds] ->
    [B, L, Dt] (a transformer block's hidden states) the same linear map at every position.
    """
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        kernel = (student_shape[2] - teacher_shape[2] + 1, student_shape[3] - teacher_shape[3] + 1)
        if min(kernel) < 1:
            raise ValueError(
                f"FitNets' guided layer output {tuple(student_shape[1:])} is spatially smaller than the hint "
                f"{tuple(teacher_shape[1:])}; guide a student layer with at least the hint's spatial size."
            )
        return nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=kernel)
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    if len(student_shape) == 3 and len(teacher_shape) == 3 and student_shape[1] == teacher_shape[1]:
        return nn.Linear(student_shape[2], teacher_shape[2])  # nn.Linear maps the last dimension
    raise ValueError(f"FitNets cannot regress a {tuple(student_shape[1:])} output onto a {tuple(teacher_shape[1:])} hint.")


class FitNets(DistillationMethod):
    """Two stages. Stage 1 (the first ``hint_epochs`` epochs) trains the student up to its guided
    layer, plus a regressor r, to predict the teacher's hint layer:

        L_HT = || u_h(x) - r(v_g(x)) ||^2        (mean squared error)

    Stage 2 trains the whole student with knowledge distillation, with the paper's weighting:

        L_KD = CE(z_s, y) + lambda * KL(softmax(z_t / T) || softmax(z_s / T)),

    lambda annealed linearly from ``kd_weight_start`` to ``kd_weight_end`` over stage 2.

    Args:
        hint_layer: module path of the teacher's hint layer.
        guided_layer: module path of the student's guided layer.
        hint_epochs: epochs of stage 1 (0 skips it).
        temperature: T of the stage-2 KD term (the paper uses 3; no T^2 factor, as in the paper).
        kd_weight_start, kd_weight_end: lambda at the start and the end of stage 2 (paper: 4 -> 1).
    """

    family = "classifier"
    paper = "Romero et al. 2015, FitNets: Hints for Thin Deep Nets (arXiv:1412.6550)"
    # The paper uses T = 3 and lambda annealed from 4; these ranges bracket both.
    search_space = {"temperature": LogUniform(1.0, 8.0), "kd_weight_start": LogUniform(1.0, 10.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        hint_layer: str = "features.5",
        guided_layer: str = "features.5",
        hint_epochs: NonNegativeInt = 1,
        temperature: PositiveFloat = 3.0,
        kd_weight_start: NonNegativeFloat = 4.0,
        kd_weight_end: NonNegativeFloat = 1.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.hint_layer, self.guided_layer, self.hint_epochs = hint_layer, guided_layer, hint_epochs
        self.temperature, self.kd_weight_start, self.kd_weight_end = temperature, kd_weight_start, kd_weight_end
        self.regressor: nn.Module | None = None

    def teacher_taps(self) -> list[str]:
        return [self.hint_layer]

    def student_taps(self) -> list[str]:
        return [self.guided_layer]

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        try:
            build_regressor(student_shapes[self.guided_layer], teacher_shapes[self.hint_layer])
        except ValueError as error:
            problems.append(str(error))
        if self.hint_epochs >= max_epochs:
            problems.append(
                f"fitnets' hint_epochs ({self.hint_epochs}) must be below trainer.max_epochs ({max_epochs}): "
                f"stage 2 (knowledge distillation of the whole student) would never run."
            )
        return problems

    def setup(self, stage: str) -> None:
        if self.regressor is not None:
            return
        example = self.trainer.datamodule.split("train")[0][:2]
        with torch.no_grad(), capture_features(self.student, [self.guided_layer]) as guided:
            self.student(example)
        hint = self.teacher(example, taps=[self.hint_layer]).features[self.hint_layer]
        self.regressor = build_regressor(guided[self.guided_layer].shape, hint.shape)

    def kd_weight(self) -> float:
        """lambda for the current epoch of stage 2, annealed linearly."""
        stage2_epochs = max(1, self.trainer.max_epochs - self.hint_epochs - 1)
        progress = min(1.0, max(0, self.current_epoch - self.hint_epochs) / stage2_epochs)
        return self.kd_weight_start + (self.kd_weight_end - self.kd_weight_start) * progress

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = batch["y"].shape[0]
        if self.current_epoch < self.hint_epochs:
            signal, _, guided = student_and_teacher_features(self, batch, [self.guided_layer], [self.hint_layer])
            loss = hint_loss(self.regressor(guided[self.guided_layer]), signal.features[self.hint_layer])
            self.log_train("train/hint", loss, size)
        else:
            student_logits = self.student(batch["x"])
            soft = kd_kl(student_logits, teacher_signal(self, batch).logits, temperature=self.temperature, scale_by_t2=False)
            loss = F.cross_entropy(student_logits.float(), batch["y"]) + self.kd_weight() * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
