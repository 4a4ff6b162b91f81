r"""`dmd`: distribution matching distillation (Yin et al. 2024, "One-step Diffusion with
Distribution Matching Distillation", Algorithm 1).

A one-step generator :math:`G_\theta(z)` (the student's ``x0`` prediction from pure noise at
``t_max``, initialised from the teacher) is trained with two losses:

* the **distribution-matching** gradient :math:`(s_\text{fake} - s_\text{real})` of the KL between
  the generator's and the data's noised distributions, at ``t`` uniform over
  ``[0.02, 0.98]`` of the range, normalised by ``mean |x - x0_real|``
  (`anydistill.diffusion.targets.dmd_gradient`), applied as ``0.5 ||x - sg(x - grad)||^2``;
* the **regression** loss :math:`\lambda_\text{reg}\, d(G_\theta(z_\text{ref}), y_\text{ref})` on
  teacher noise -> sample pairs ``(z_ref, y_ref = ODE_teacher(z_ref))`` generated once before
  training (the paper: LPIPS, :math:`\lambda_\text{reg} = 0.25`; here L2 or pseudo-Huber, since
  LPIPS needs downloaded weights).

The fake score :math:`\mu_\text{fake}` (a trainable copy of the teacher) is trained with the
denoising loss on the generator's detached samples. One generator update and one fake-score update
alternate every iteration (1:1, the paper's schedule), each with its own Adam. The real score is the
teacher (guided by ``cfg``).

Data flow: ``own_loop``; `attach_data` generates the pairs (as `reflow` does), and each batch of
pairs also sizes the batch of fresh noise for the distribution-matching term. Each iteration makes
two optimizer steps, so Lightning's ``global_step`` advances by 2 per batch.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from anydistill.core.method import DistillationMethod
from anydistill.core.optim import make_optimizer
from anydistill.core.recipe import Fraction, NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.teacher import Teacher
from anydistill.diffusion.common import TensorRows, check_denoiser, diffusion_teacher, predict, rows_loader, schedule_of, teacher_pairs
from anydistill.diffusion.distribution_matching import (
    distribution_matching_loss,
    dm_time_sampler,
    fake_score_loss,
    one_step_input,
    trainable_copy,
)
from anydistill.diffusion.methods.reflow import draw_pair_inputs
from anydistill.diffusion.targets import pseudo_huber


class DMD(DistillationMethod):
    """Distribution matching plus regression on teacher pairs; see the module docstring.

    Args:
        num_pairs, pairs_per_example, pair_steps, pair_solver: the teacher pairs (as in `reflow`).
        regression_weight: :math:`\\lambda_\\text{reg}` (0.25).
        regression_loss: ``l2`` or ``pseudo-huber`` (in place of LPIPS).
        fake_lr: learning rate of the fake score (default the recipe's optimizer lr).
        t_low, t_high: fractions of the time range the DM loss draws ``t`` from (0.02, 0.98).
        cfg: guidance weight of the real score (and of the teacher's pairs).
    """

    family = "diffusion"
    paper = "Yin et al. 2024, One-step Diffusion with Distribution Matching Distillation (DMD)"
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
        regression_weight: NonNegativeFloat = 0.25,
        regression_loss: Literal["l2", "pseudo-huber"] = "l2",
        fake_lr: PositiveFloat | None = None,
        t_low: Fraction = 0.02,
        t_high: Fraction = 0.98,
        cfg: float | None = None,
    ):
        super().__init__(student, teacher, optimizer)
        if not t_low < t_high:
            raise ValueError(f"dmd: t_low must be < t_high. Got {t_low} and {t_high}.")
        self.automatic_optimization = False
        self.num_pairs, self.pairs_per_example, self.pair_steps, self.pair_solver = num_pairs, pairs_per_example, pair_steps, pair_solver
        self.regression_weight, self.regression_loss, self.fake_lr = regression_weight, regression_loss, fake_lr
        self.t_low, self.t_high, self.cfg = t_low, t_high, cfg
        self.rows: TensorRows | None = None

    def starts_from_teacher(self) -> bool:
        return True

    def attach_data(self, datamodule: Any) -> None:
        check_denoiser(self.student, "dmd")
        if self.teacher is None:
            raise ValueError("dmd needs a teacher (real score and regression pairs): add a `teacher:` section.")
        teacher = diffusion_teacher(self.teacher)
        self.seed = torch.initial_seed() % 2**32
        generator = torch.Generator().manual_seed(self.seed)
        conditional = self.student.null_class is not None
        z, cond = draw_pair_inputs(datamodule, self.num_pairs, self.pairs_per_example, teacher.schedule, conditional, generator)
        rows = {"z": z, "x": teacher_pairs(teacher, z, cond, self.pair_steps, solver=self.pair_solver, cfg=self.cfg)}
        if cond is not None:
            rows["y"] = cond
        self.rows, self.batch_size = TensorRows(**rows), datamodule.batch_size

    def setup(self, stage: str) -> None:
        check_denoiser(self.student, "dmd")
        self.real_teacher = diffusion_teacher(self.teacher)
        self.student.load_state_dict(self.teacher.model.state_dict())  # the generator starts as the teacher
        self.fake = trainable_copy(self.teacher.model)  # and so does the fake score
        self.schedule = schedule_of(self.student)
        self.dm_times = dm_time_sampler(self.schedule, self.t_low, self.t_high)
        self.student.sampling = {"sampler": "one-step", "steps": [1]}

    def train_dataloader(self):
        if self.rows is None:
            raise RuntimeError("dmd draws its own pairs: the runner calls attach_data(datamodule) before fitting.")
        return rows_loader(self.rows, self.batch_size, self.seed, self.trainer)

    def configure_optimizers(self):
        spec = self.optimizer_spec
        return [make_optimizer(spec, self.student.parameters()), make_optimizer(spec, self.fake.parameters(), lr=self.fake_lr or spec.lr)]

    def generate(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``G_theta(z)``: the student's x0 prediction from pure noise, with gradients."""
        x_T, t = one_step_input(self.schedule, z)
        return predict(self.student, x_T, t, cond, "x0")

    def generator_losses(self, batch: dict[str, torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss_dm, loss_reg, x)``: the two generator losses on fresh noise ``z`` and the batch of
        teacher pairs, and the generated samples ``x = G(z)`` (with gradients)."""
        cond = batch["y"] if self.student.null_class is not None else None
        x = self.generate(z, cond)
        loss_dm = distribution_matching_loss(x, cond, self.real_teacher, self.fake, self.schedule, self.dm_times, self.cfg)
        x_ref = self.generate(batch["z"], cond)
        if self.regression_loss == "l2":
            loss_reg = (x_ref.float() - batch["x"].float()).pow(2).flatten(1).mean(1).mean()
        else:
            loss_reg = pseudo_huber(x_ref, batch["x"]).mean()
        return loss_dm, loss_reg, x

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_f = self.optimizers()
        cond = batch["y"] if self.student.null_class is not None else None
        z = self.schedule.sample_noise(batch["z"], None)

        # Generator: distribution matching on fresh noise + regression on the teacher's pairs.
        loss_dm, loss_reg, x = self.generator_losses(batch, z)
        opt_g.zero_grad()
        self.manual_backward(loss_dm + self.regression_weight * loss_reg)
        opt_g.step()

        # Fake score: denoising on the generator's (detached) samples.
        loss_f = fake_score_loss(self.fake, self.schedule, x, cond)
        opt_f.zero_grad()
        self.manual_backward(loss_f)
        opt_f.step()

        n = z.shape[0]
        self.log_train("train/loss_dm", loss_dm, n)
        self.log_train("train/loss_reg", loss_reg, n, prog_bar=True)
        self.log_train("train/loss_fake", loss_f, n)
