r"""`reflow`: rectified-flow reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast"), with the
options of RF++ (Lee, Lin & Fanti 2024, "Improving the Training of Rectified Flows").

The teacher (the 1-rectified flow, or any diffusion model) is solved from noise once, before
training: ``num_pairs`` couplings ``(z, x = ODE_teacher(z))`` (``pair_steps`` steps of its
probability-flow ODE, `anydistill.diffusion.common.teacher_pairs`), kept in memory. The student
(the 2-rectified flow, a velocity model on `RectifiedFlow`) regresses the straight path between
each pair,

.. math::  x_t = (1 - t)\,x + t\,z,\qquad \mathcal L = d\big(v_\theta(x_t, t),\ z - x\big),

(`anydistill.diffusion.targets.rectified_flow_loss`), so its ODE becomes straighter and a single
Euler step lands close to the teacher's sample. RF++ options: ``time_distribution: u-shaped``
(:math:`p(t) \propto e^{a t} + e^{a (1 - t)}`, a = 4), ``loss: pseudo-huber``
(:math:`c = 0.00054\,d`) and ``init_from_teacher`` (start from the 1-RF weights; Liu et al. also
initialise 2-RF from 1-RF). RF++'s LPIPS term needs downloaded weights and is not available.

Data flow: ``own_loop``. `attach_data` draws the noise (seeded by the run's seed) and labels
(those of the training split, for conditional models) and solves the teacher; the method's own
loader then serves pairs, ``data.batch_size`` at a time.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.teacher import Teacher
from anydistill.diffusion.common import TensorRows, check_denoiser, diffusion_teacher, predict, rows_loader, teacher_pairs
from anydistill.diffusion.schedules import RectifiedFlow
from anydistill.diffusion.targets import rectified_flow_loss
from anydistill.diffusion.timesteps import UniformTime, UShapedTime


def draw_pair_inputs(datamodule: Any, num_pairs: int | None, pairs_per_example: int, schedule, conditional: bool,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise ``[P, ...]`` for teacher pairs and their labels: the training split's labels repeated
    (so the classes keep their frequencies), ``P`` = ``num_pairs`` or ``pairs_per_example`` x N."""
    x, y = datamodule.split("train")
    count = num_pairs or pairs_per_example * x.shape[0]
    z = torch.randn((count, *x.shape[1:]), generator=generator) * schedule.noise_std
    cond = y.repeat(-(-count // y.shape[0]))[:count] if conditional else None
    return z, cond


class Reflow(DistillationMethod):
    """Reflow on teacher pairs; see the module docstring.

    Args:
        num_pairs: teacher couplings to generate (default ``pairs_per_example`` per training example).
        pairs_per_example: see ``num_pairs``.
        pair_steps: steps of the teacher's ODE solver for the pairs.
        pair_solver: ``heun`` or ``euler``.
        time_distribution: ``uniform`` (RF) or ``u-shaped`` (RF++).
        u_shape_a: ``a`` of the U-shaped density (4 in RF++).
        loss: ``l2`` (RF) or ``pseudo-huber`` (RF++).
        huber_c: the pseudo-Huber constant (default ``0.00054 d``).
        init_from_teacher: start from the teacher's weights (RF++ and Liu et al.; needs the same architecture).
        cfg: guidance weight of the teacher when solving for the pairs.
        sample_steps: Euler step counts the student is evaluated at.
    """

    family = "diffusion"
    paper = "Liu, Gong & Liu 2022, Flow Straight and Fast (reflow); Lee, Lin & Fanti 2024, RF++"
    data = "teacher-generated"
    own_loop = True

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        num_pairs: PositiveInt | None = None,
        pairs_per_example: PositiveInt = 1,
        pair_steps: PositiveInt = 32,
        pair_solver: Literal["heun", "euler"] = "heun",
        time_distribution: Literal["uniform", "u-shaped"] = "uniform",
        u_shape_a: PositiveFloat = 4.0,
        loss: Literal["l2", "pseudo-huber"] = "l2",
        huber_c: PositiveFloat | None = None,
        init_from_teacher: bool = True,
        cfg: float | None = None,
        sample_steps: list[PositiveInt] = [1, 2, 4],  # noqa: B006
    ):
        super().__init__(student, teacher, optimizer)
        self.num_pairs, self.pairs_per_example = num_pairs, pairs_per_example
        self.pair_steps, self.pair_solver = pair_steps, pair_solver
        self.time_distribution, self.u_shape_a = time_distribution, u_shape_a
        self.loss_name, self.huber_c, self.init_from_teacher, self.cfg = loss, huber_c, init_from_teacher, cfg
        self.sample_steps = sorted(set(sample_steps))
        self.rows: TensorRows | None = None

    def starts_from_teacher(self) -> bool:
        return self.init_from_teacher

    def attach_data(self, datamodule: Any) -> None:
        check_denoiser(self.student, "reflow")
        if (self.student.schedule, self.student.prediction) != ("rectified-flow", "velocity"):
            raise ValueError("reflow trains a rectified flow: build the student with schedule: rectified-flow, "
                             f"prediction: velocity. Got {self.student.schedule}, {self.student.prediction}.")
        if self.teacher is None:
            raise ValueError("reflow needs a teacher to generate its pairs: add a `teacher:` section.")
        teacher = diffusion_teacher(self.teacher)
        self.seed = torch.initial_seed() % 2**32  # the runner seeded everything with the recipe's seed
        generator = torch.Generator().manual_seed(self.seed)
        conditional = self.student.null_class is not None
        z, cond = draw_pair_inputs(datamodule, self.num_pairs, self.pairs_per_example, teacher.schedule, conditional, generator)
        x = teacher_pairs(teacher, z, cond, self.pair_steps, solver=self.pair_solver, cfg=self.cfg)
        # The pairs' noise must be the student's (RectifiedFlow, std 1); a teacher on another schedule
        # with another noise std is rescaled onto it.
        z = z / teacher.schedule.noise_std
        rows = {"z": z, "x": x}
        if cond is not None:
            rows["y"] = cond
        self.rows = TensorRows(**rows)
        self.batch_size = datamodule.batch_size
        if self.init_from_teacher:
            self.student.load_state_dict(self.teacher.model.state_dict())

    def setup(self, stage: str) -> None:
        self.schedule = RectifiedFlow()
        self.times = UShapedTime(self.u_shape_a) if self.time_distribution == "u-shaped" else UniformTime()
        self.student.sampling = {"sampler": "euler", "steps": self.sample_steps}

    def train_dataloader(self):
        if self.rows is None:
            raise RuntimeError("reflow draws its own pairs: the runner calls attach_data(datamodule) before fitting.")
        return rows_loader(self.rows, self.batch_size, self.seed, self.trainer)

    def configure_optimizers(self):
        from anydistill.core.optim import build_optimizer

        return build_optimizer(self.optimizer_spec, self.student.parameters(), self.trainer.estimated_stepping_batches)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, z = batch["x"], batch["z"]
        cond = batch.get("y") if self.student.null_class is not None else None
        t = self.times.sample(x.shape[0], self.schedule, generator=None, device=x.device)
        x_t = self.schedule.add_noise(x, z, t)
        velocity = predict(self.student, x_t, t, cond, "velocity")
        loss = "l2" if self.loss_name == "l2" else "pseudo_huber"
        return rectified_flow_loss(velocity, x, z, t, loss, huber_c=self.huber_c)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log_train("train/loss", loss, batch["x"].shape[0], prog_bar=True)
        return loss
