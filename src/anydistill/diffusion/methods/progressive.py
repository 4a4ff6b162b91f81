r"""`progressive`: progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast
Sampling of Diffusion Models", Algorithm 2).

The student, initialised from the teacher, learns to do in **one** deterministic DDIM step what
its teacher does in **two**: for ``x_t`` on the student's grid of ``N`` steps the target is the
``x~`` of `anydistill.diffusion.targets.progressive_distillation_target` (two teacher DDIM steps
``t -> t - 1/(2N) -> t - 1/N``, solved for the ``x0`` that makes one student step land on the
same point), and the loss is :math:`\max(\mathrm{SNR}_t, 1)\,\|\hat x_\theta(x_t) - \tilde x\|^2`
(truncated-SNR weighting, `pd_weight`). After a round the student becomes the teacher of the next
one and ``N`` halves: ``teacher_steps -> teacher_steps/2 -> ... -> student_steps``.

**Rounds and trainer epochs.** Round ``r`` (0-based) runs for ``epochs_per_round`` trainer epochs
``[r E, (r+1) E)``; its student takes ``teacher_steps / 2^(r+1)`` steps. Round 0 distills the
recipe's teacher (with guidance ``cfg`` if given); at the start of every later round the student's
weights are frozen into ``round_teacher`` (part of the checkpoint, so a run resumed mid-round has
the right teacher), the optimizer state is reset and the learning rate, which decays linearly to 0
within each round as in the paper, restarts. The recipe needs ``trainer.max_epochs = rounds x
epochs_per_round`` (extra epochs continue the last round at zero learning rate).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from anydistill.core.method import DistillationMethod
from anydistill.core.optim import make_optimizer
from anydistill.core.recipe import OptimizerSpec, PositiveInt
from anydistill.core.teacher import Teacher
from anydistill.diffusion.common import check_denoiser, diffusion_teacher, frozen_copy, predict, schedule_of
from anydistill.diffusion.samplers import time_grid
from anydistill.diffusion.targets import pd_weight, progressive_distillation_target


class ProgressiveDistillation(DistillationMethod):
    """Halve the sampling steps round after round; see the module docstring.

    Args:
        teacher_steps: the teacher's DDIM steps (a power-of-two multiple of ``student_steps``).
        student_steps: the final student's steps.
        epochs_per_round: trainer epochs per halving round.
        weighting: ``snr_trunc`` (the paper's), ``snr``, ``snr+1`` or ``constant``.
        cfg: guidance weight applied to the recipe's teacher in round 0 (``None``: none).
    """

    family = "diffusion"
    paper = "Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models"
    data = "real"

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_steps: PositiveInt = 64,
        student_steps: PositiveInt = 4,
        epochs_per_round: PositiveInt = 5,
        weighting: Literal["snr_trunc", "snr", "snr+1", "constant"] = "snr_trunc",
        cfg: float | None = None,
    ):
        super().__init__(student, teacher, optimizer)
        ratio = teacher_steps / student_steps
        if teacher_steps <= student_steps or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(
                f"progressive: teacher_steps / student_steps must be a power of two > 1 (halving rounds). "
                f"Got {teacher_steps} / {student_steps}."
            )
        self.teacher_steps, self.student_steps, self.epochs_per_round = teacher_steps, student_steps, epochs_per_round
        self.rounds = int(round(math.log2(ratio)))
        self.weighting, self.cfg = weighting, cfg

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs: int) -> list[str]:
        needed = self.rounds * self.epochs_per_round
        if max_epochs < needed:
            return [f"progressive runs {self.rounds} halving rounds of {self.epochs_per_round} epochs: set "
                    f"trainer.max_epochs to {needed} (now {max_epochs}), or lower epochs_per_round."]
        return []

    def starts_from_teacher(self) -> bool:
        return True

    def setup(self, stage: str) -> None:
        check_denoiser(self.student, "progressive")
        if self.teacher is None:
            raise ValueError("progressive distills a teacher: the recipe needs a `teacher:` section.")
        self.real_teacher = diffusion_teacher(self.teacher)
        # The student starts as the teacher (the paper's initialisation); a checkpoint restored
        # after setup overrides both copies.
        self.student.load_state_dict(self.teacher.model.state_dict())
        self.round_teacher = frozen_copy(self.student)
        self.schedule = schedule_of(self.student)
        self.student.sampling = {"sampler": "ddim", "steps": [self.student_steps]}

    # ------------------------------------------------------------------ rounds

    def current_round(self) -> int:
        return min(self.current_epoch // self.epochs_per_round, self.rounds - 1)

    def round_student_steps(self) -> int:
        """``N`` of the current round: the teacher's steps halved ``round + 1`` times."""
        return self.teacher_steps // 2 ** (self.current_round() + 1)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        new_round = self.current_epoch // self.epochs_per_round
        if self.current_epoch % self.epochs_per_round == 0 and 1 <= new_round < self.rounds:
            self.round_teacher.load_state_dict(self.student.state_dict())  # the student becomes the teacher
            self.optimizers().optimizer.state.clear()  # a fresh optimizer state per round, as each round is a new run

    def configure_optimizers(self):
        optimizer = make_optimizer(self.optimizer_spec, self.student.parameters())

        def linear_within_round(step: int) -> float:
            per_round = self.trainer.num_training_batches * self.epochs_per_round
            if not math.isfinite(per_round) or per_round <= 0:
                return 1.0
            if step >= per_round * self.rounds:
                return 0.0
            return 1.0 - (step % per_round) / per_round

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_within_round)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ the step

    def teacher_x0(self, cond: torch.Tensor | None):
        """``fn(x, t) -> x0`` of this round's teacher (the recipe's in round 0, the frozen student after)."""
        if self.current_round() == 0:
            guidance = self.cfg if cond is not None else None
            return lambda x, t: self.real_teacher.predict(x, t, cond, kind="x0", cfg=guidance)
        return lambda x, t: predict(self.round_teacher, x, t, cond, "x0")

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = batch["x"]
        cond = batch["y"] if self.student.null_class is not None else None
        n = self.round_student_steps()
        # The student's times t = i / N, i ~ U{1..N}: the grid of its own N-step DDIM sampler.
        grid = time_grid(self.schedule, n)[:-1].to(x0.device, torch.float32)
        t = grid[torch.randint(n, (x0.shape[0],), device=x0.device)]
        x_t = self.schedule.add_noise(x0, self.schedule.sample_noise(x0, None), t)
        target = progressive_distillation_target(x_t, t, self.teacher_x0(cond), self.schedule, n)
        x0_student = predict(self.student, x_t, t, cond, "x0")
        per_example = (x0_student.float() - target.float()).pow(2).flatten(1).mean(1)
        return (pd_weight(t, self.schedule, self.weighting).float() * per_example).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log_train("train/loss", loss, batch["x"].shape[0], prog_bar=True)
        return loss
