r"""`consistency`: consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency
Models", Algorithm 2), discrete time.

On the grid ``t_max = t_1 > ... > t_N = t_min`` (``num_scales`` points, `time_grid`), draw ``n``
uniformly, noise real data to :math:`x_{t_{n+1}}` (the larger time) and take **one Heun step of
the teacher's probability-flow ODE** to :math:`\hat x_{t_n}`
(`anydistill.diffusion.targets.consistency_distillation_pair`). The loss is

.. math::  \mathcal L = d\big(f_\theta(x_{t_{n+1}}, t_{n+1}),\ f_{\theta^-}(\hat x_{t_n}, t_n)\big),

with :math:`\lambda = 1` and ``d`` the squared L2 distance (per element mean) or pseudo-Huber
(iCT). The target :math:`\theta^-` is an EMA of :math:`\theta` with decay ``ema_decay`` (0.95 in the
official CD launch scripts), updated after every optimizer step (once per accumulation window); the student and target start
from the teacher's weights, as in the paper.

**Parametrisation.** :math:`f_\theta(x_t, t)` is the student network's ``x0`` prediction (its
native kind converted by the schedule). For a velocity model on rectified flow that is
:math:`x_t - t\,v_\theta`, which is the paper's :math:`c_\text{skip} x + c_\text{out} F` with
``c_skip = 1``, ``c_out = -t``: the boundary condition :math:`f(x, t_\min) = x` holds exactly
whenever :math:`\sigma(t_\min) = 0` (rectified flow, VP cosine, TrigFlow, whose consistency
function Lu & Song write the same way) and to within ``c_out(sigma_min)`` for EDM. This is what lets
the student start from the teacher (a denoiser already is a one-step ``x0`` estimate). An EDM-preconditioned student takes
the paper's boundary-corrected parametrisation instead (``preconditioning: consistency``, the
teacher's network with :math:`c_\text{skip}(t_\min) = 1, c_\text{out}(t_\min) = 0`), as
openai/consistency_models does, and is exported with it.

Sampling: the multistep consistency sampler (Algorithm 1) at ``sample_steps``.
"""

from __future__ import annotations

from typing import Literal

import torch

from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import Fraction, OptimizerSpec, PositiveInt
from anydistill.core.teacher import Teacher
from anydistill.diffusion.common import check_denoiser, diffusion_teacher, ema_update, frozen_copy, predict, schedule_of
from anydistill.diffusion.samplers import time_grid
from anydistill.diffusion.targets import consistency_distillation_pair, pseudo_huber


class ConsistencyDistillation(DistillationMethod):
    """Consistency distillation; see the module docstring.

    Args:
        num_scales: ``N``, the points of the discretisation (18 on CIFAR-10, 40 on ImageNet-64).
        ema_decay: ``mu`` of the target network (0.95).
        solver: the teacher's ODE step, ``heun`` (the paper's) or ``euler``.
        distance: ``l2`` or ``pseudo-huber`` (``c = 0.00054 sqrt(d)`` unless ``huber_c``).
        spacing: the grid, ``uniform`` in t or ``karras`` (EDM's rho = 7).
        cfg: guidance weight of the teacher (``None``: none).
        sample_steps: the step counts the student is sampled and evaluated at.
    """

    family = "diffusion"
    paper = "Song, Dhariwal, Chen & Sutskever 2023, Consistency Models (consistency distillation)"
    data = "real"

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        num_scales: PositiveInt = 18,
        ema_decay: Fraction = 0.95,
        solver: Literal["heun", "euler"] = "heun",
        distance: Literal["l2", "pseudo-huber"] = "l2",
        huber_c: float | None = None,
        spacing: Literal["uniform", "karras"] = "uniform",
        cfg: float | None = None,
        sample_steps: list[PositiveInt] = [1, 2, 4],  # noqa: B006
    ):
        super().__init__(student, teacher, optimizer)
        if num_scales < 2:
            raise ValueError(f"consistency: num_scales must be >= 2 (at least one ODE step). Got {num_scales}.")
        if huber_c is not None and huber_c <= 0:
            raise ValueError(f"consistency: huber_c must be > 0 or null. Got {huber_c}.")
        self.num_scales, self.ema_decay, self.solver = num_scales, ema_decay, solver
        self.distance, self.huber_c, self.spacing, self.cfg = distance, huber_c, spacing, cfg
        self.sample_steps = sorted(set(sample_steps))

    def starts_from_teacher(self) -> bool:
        return True

    def setup(self, stage: str) -> None:
        check_denoiser(self.student, "consistency")
        if self.teacher is None:
            raise ValueError("consistency distills a teacher: the recipe needs a `teacher:` section.")
        self.real_teacher = diffusion_teacher(self.teacher)
        self.student.load_state_dict(self.teacher.model.state_dict())
        if self.student.preconditioning == "edm":
            # The paper's parametrisation on the EDM teacher's network: the same inputs, the
            # boundary-corrected c_skip/c_out (f(x, t_min) = x exactly); sampled and exported as such.
            self.student.preconditioning = "consistency"
        self.target = frozen_copy(self.student)  # theta^-: in the checkpoint, never optimised
        self.schedule = schedule_of(self.student)
        self.grid = time_grid(self.schedule, self.num_scales - 1, spacing=self.spacing).float()
        self.student.sampling = {"sampler": "multistep", "steps": self.sample_steps}

    def configure_optimizers(self):
        from anydistill.core.optim import build_optimizer

        return build_optimizer(self.optimizer_spec, self.student.parameters(), self.trainer.estimated_stepping_batches)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = batch["x"]
        cond = batch["y"] if self.student.null_class is not None else None
        grid = self.grid.to(x0.device)
        n = torch.randint(self.num_scales - 1, (x0.shape[0],), device=x0.device)
        t_next, t_cur = grid[n], grid[n + 1]  # t_{n+1} > t_n
        x_next = self.schedule.add_noise(x0, self.schedule.sample_noise(x0, None), t_next)
        guidance = self.cfg if cond is not None else None

        def teacher_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.real_teacher.predict(x, t, cond, kind="velocity", cfg=guidance)

        x_cur = consistency_distillation_pair(x_next, t_next, t_cur, teacher_velocity, self.schedule, self.solver)
        with torch.no_grad():
            target = predict(self.target, x_cur, t_cur, cond, "x0")
        online = predict(self.student, x_next, t_next, cond, "x0")
        if self.distance == "l2":
            return (online.float() - target.float()).pow(2).flatten(1).mean(1).mean()
        return pseudo_huber(online, target, self.huber_c).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log_train("train/loss", loss, batch["x"].shape[0], prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self._ema_step = self.trainer.global_step  # a resumed run has taken steps already

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Once per optimizer step: with gradient accumulation a micro-batch that only accumulated
        # leaves the student unchanged, and a per-micro-batch update would decay the target faster.
        if self.trainer.global_step != getattr(self, "_ema_step", 0):
            self._ema_step = self.trainer.global_step
            ema_update(self.target, self.student, self.ema_decay)
