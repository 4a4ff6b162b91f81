"""`diffusion-teacher`: trains the recipe's teacher denoiser on real data (no distillation).

The denoising regression of `anydistill.diffusion.teacher.denoiser_loss` in the network's own
prediction kind on its own schedule (both named by the recipe's ``teacher:`` section, e.g.
``schedule: rectified-flow, prediction: velocity`` is flow matching), with times drawn from a
configurable distribution and, for conditional networks, labels dropped to the null class with
probability ``label_dropout`` so that one network also learns the unconditional model that
classifier-free guidance (Ho & Salimans 2022) needs.
"""

from __future__ import annotations

from typing import Literal

import torch

from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec
from anydistill.core.teacher import Teacher
from anydistill.diffusion.common import check_denoiser, drop_labels, schedule_of
from anydistill.diffusion.teacher import denoiser_loss
from anydistill.diffusion.timesteps import LogitNormalTime, LogNormalTime, UniformTime

TimeDistribution = Literal["uniform", "logit-normal", "log-normal"]


def time_sampler(name: str, low: float | None = None, high: float | None = None):
    """The `TimeSampler` named by a recipe (``uniform`` on ``[low, high]`` of the schedule's range)."""
    if name == "uniform":
        return UniformTime(low, high)
    return LogitNormalTime() if name == "logit-normal" else LogNormalTime()


class DiffusionTeacherTraining(DistillationMethod):
    """Denoiser training for the recipe's teacher architecture.

    Args:
        time_distribution: how training times are drawn: ``uniform`` on the schedule's range (DDPM,
            rectified flow), ``logit-normal`` (SD3) or ``log-normal`` (EDM's P_mean -1.2, P_std 1.2).
        label_dropout: probability of replacing a label by the null class (0.1 in Ho & Salimans);
            ignored by unconditional networks.
        weighting: ``none`` or ``edm`` (EDM's loss weight; EDM schedule and x0 prediction only).
    """

    family = "diffusion"
    paper = "trains a diffusion teacher: denoising score matching / flow matching (Ho+ 2020; Lipman+ 2022)"
    needs_teacher = False
    trains = "teacher"

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        time_distribution: TimeDistribution = "uniform",
        label_dropout: NonNegativeFloat = 0.1,
        weighting: Literal["none", "edm"] = "none",
    ):
        super().__init__(student, teacher, optimizer)
        if label_dropout > 1:
            raise ValueError(f"label_dropout must be a probability in [0, 1]. Got {label_dropout}.")
        self.time_distribution, self.label_dropout, self.weighting = time_distribution, label_dropout, weighting
        self.times = time_sampler(time_distribution)

    def setup(self, stage: str) -> None:
        check_denoiser(self.student, "diffusion-teacher")
        self.schedule = schedule_of(self.student)

    def _loss(self, batch: dict[str, torch.Tensor], dropout: float) -> torch.Tensor:
        x0 = batch["x"]
        null = self.student.null_class
        cond = drop_labels(batch["y"], dropout, null) if null is not None else None
        t = self.times.sample(x0.shape[0], self.schedule, generator=None, device=x0.device, dtype=torch.float32)
        noise = self.schedule.sample_noise(x0, None)
        return denoiser_loss(self.student, self.schedule, x0, t, noise, cond, self.student.prediction, self.weighting,
                             preconditioning=self.student.preconditioning)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self.label_dropout)
        self.log_train("train/loss", loss, batch["x"].shape[0], prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch, 0.0), batch_size=batch["x"].shape[0])
