r"""`dmd2`: improved distribution matching distillation (Yin et al. 2024b, "Improved Distribution
Matching Distillation for Fast Image Synthesis"; official code tianweiy/DMD2).

What changes from `dmd`:

* **no regression loss** and no teacher pairs: the generator is trained by the distribution-matching
  gradient alone (`anydistill.diffusion.targets.dmd_gradient`, through ``0.5 ||x - sg(x - grad)||^2``);
* **two time-scale update rule**: the fake score (and discriminator) take ``update_ratio`` steps (5)
  per generator step (``--dfake_gen_update_ratio 5``); the fake score is updated every iteration,
  the generator on iterations ``i`` with ``i % update_ratio == 0``;
* **GAN term on real data**: a classification head on the fake score network's bottleneck features
  (the middle residual block of the zoo's denoisers), fed real and generated samples noised at a
  random time, with the softplus (non-saturating) loss: discriminator
  ``softplus(-D(real)) + softplus(D(fake))`` weighted ``gan_weight_discriminator`` (1e-2) and added to
  the fake score's denoising loss; generator ``softplus(-D(fake))`` weighted ``gan_weight_generator``
  (3e-3). The head trains with the fake score's optimizer, as in the official code. The GAN terms
  are means over the batch and the DM and denoising losses means over every element, so with
  ``gan_scale: per-sample`` (the official reduction) a weight's strength grows with the sample size D:
  3e-3 at ImageNet-64 (D = 12,288) is about 6,000x stronger than at D = 2. ``gan_scale:
  per-dimension`` divides the weights by D, so a weight is the GAN term's strength per sample against
  one element's DM term at every size (the official ImageNet-64 balance is 3e-3 x 12,288 = 36.9);
* **multi-step generation** with ``num_steps`` = K fixed times (SDXL's 999/749/499/249 of 1000,
  i.e. ``t_max (1 - k/K)`` of the range) and **backward simulation**: to train the generator at
  time ``tau_k`` its input is made by running the generator itself from pure noise through the
  first k steps (predict x0, re-noise to the next time), as at sampling; ``student_inputs:
  noised-data`` instead noises real data to ``tau_k`` (FastGen's choice), the ablation of the claim.

The generator and fake score start from the teacher (the official code), or with ``init_from: PATH``
from a ``model.safetensors`` export of the student's architecture: the way to distil a teacher with
no weights to copy (`analytic-mixture`, the exact score, which separates the method's error from the
teacher's). Each iteration draws one real batch (the data module's), labels for the generator from it
(conditional models), and fresh noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file

from anydistill.core.method import DistillationMethod
from anydistill.core.optim import make_optimizer
from anydistill.core.recipe import Fraction, NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.teacher import Teacher
from anydistill.diffusion.common import check_denoiser, diffusion_teacher, predict, schedule_of
from anydistill.diffusion.distribution_matching import (
    distribution_matching_loss,
    dm_time_sampler,
    fake_score_loss,
    trainable_copy,
)
from anydistill.diffusion.discriminator import FeatureDiscriminator, bottleneck_path, feature_width
from anydistill.diffusion.timesteps import KarrasTime, UniformTime


def step_times(schedule, num_steps: int) -> list[float]:
    """The K fixed generator times ``t_max (1 - k/K)`` of the range, k = 0 .. K-1 (SDXL: 999, 749, 499, 249 of 1000)."""
    span = schedule.t_max - schedule.t_min
    return [schedule.t_min + span * (1 - k / num_steps) for k in range(num_steps)]


def gan_weight(weight: float, scale: str, sample_size: int) -> float:
    """The weight of a GAN term (a mean over the batch) added to a loss that is a mean over every
    element of ``B x sample_size``: ``weight`` itself (``per-sample``, the official reduction: per sample
    the GAN term then counts ``weight x sample_size`` elements' worth) or ``weight / sample_size``
    (``per-dimension``: it counts ``weight`` elements' worth at every size)."""
    return weight / sample_size if scale == "per-dimension" else weight


class DMD2(DistillationMethod):
    """DMD2; see the module docstring.

    Args:
        update_ratio: fake-score (and discriminator) updates per generator update (5; 1 is DMD's 1:1).
        gan_weight_generator, gan_weight_discriminator: GAN loss weights (3e-3, 1e-2); 0 turns the GAN off.
        gan_scale: ``per-sample`` (the official reduction) or ``per-dimension`` (weights divided by the
            sample size D: the same balance against the DM term at every D; see `gan_weight`).
        time_sampling: noise levels of the DM term, the fake score and the discriminator: ``uniform``
            in ``t`` (over ``[t_low, t_high]`` for DM), or ``karras``: a uniform index of the Karras
            rho-7 grid (DMD2's EDM code; on `EDM` the median sigma is 2.5 where uniform gives 40).
        fake_weighting: the fake score's loss weight: ``none``, or ``edm`` (DMD2's EDM code:
            sigma^-2 + sigma_d^-2 on an x0 loss; the EDM schedule with x0 prediction).
        generator_labels: a conditional generator's classes: the real batch's (``data``) or drawn
            uniformly (``uniform``, the official code; the discriminator's real branch keeps the
            real labels either way).
        max_grad_norm: clip each network's gradient norm before its step (the official 10; None: off).
        The optimizers are the recipe's (the official code: AdamW, betas (0.9, 0.999), weight decay 0.01).
        num_steps: K, the generator's steps (1: one-step).
        student_inputs: ``backward-simulation`` or ``noised-data`` (K > 1).
        fake_lr: learning rate of the fake score and head (default the recipe's lr).
        t_low, t_high: fractions of the range the distribution-matching ``t`` is drawn from.
        cfg: guidance weight of the real score.
        head_hidden: width of the discriminator head.
        gan_loss: ``softplus`` (DMD2's non-saturating loss), ``hinge`` or ``wgan`` (`diffusion.discriminator`).
        lora_rank: train the generator as LoRA adapters of this rank on the teacher's frozen weights
            (`diffusion.lora`; exported merged, and apart in ``lora/``); None: all its weights train.
        lora_alpha: the adapters' scale numerator (default the rank).
        r1: weight of the R1 penalty on real samples (0: off, as DMD2).
        init_from: where the generator and the fake score start: ``teacher`` (its weights, the
            official code) or the path of a ``model.safetensors`` export of the student's architecture.
    """

    family = "diffusion"
    paper = "Yin et al. 2024, Improved Distribution Matching Distillation for Fast Image Synthesis (DMD2)"
    data = "real"

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        update_ratio: PositiveInt = 5,
        gan_weight_generator: NonNegativeFloat = 3e-3,
        gan_weight_discriminator: NonNegativeFloat = 1e-2,
        gan_scale: Literal["per-sample", "per-dimension"] = "per-sample",
        time_sampling: Literal["uniform", "karras"] = "uniform",
        fake_weighting: Literal["none", "edm"] = "none",
        generator_labels: Literal["data", "uniform"] = "data",
        max_grad_norm: PositiveFloat | None = None,
        num_steps: PositiveInt = 1,
        student_inputs: Literal["backward-simulation", "noised-data"] = "backward-simulation",
        fake_lr: PositiveFloat | None = None,
        t_low: Fraction = 0.02,
        t_high: Fraction = 0.98,
        cfg: float | None = None,
        head_hidden: PositiveInt = 256,
        gan_loss: Literal["softplus", "hinge", "wgan"] = "softplus",
        r1: NonNegativeFloat = 0.0,
        lora_rank: PositiveInt | None = None,
        lora_alpha: PositiveFloat | None = None,
        init_from: str = "teacher",
    ):
        super().__init__(student, teacher, optimizer)
        if not t_low < t_high:
            raise ValueError(f"dmd2: t_low must be < t_high. Got {t_low} and {t_high}.")
        self.automatic_optimization = False
        self.update_ratio, self.gan_weight_generator, self.gan_weight_discriminator = update_ratio, gan_weight_generator, gan_weight_discriminator
        self.num_steps, self.student_inputs, self.fake_lr = num_steps, student_inputs, fake_lr
        self.t_low, self.t_high, self.cfg, self.head_hidden = t_low, t_high, cfg, head_hidden
        self.gan_loss, self.r1, self.lora_rank, self.lora_alpha = gan_loss, r1, lora_rank, lora_alpha
        self.gan_scale, self.time_sampling, self.fake_weighting = gan_scale, time_sampling, fake_weighting
        self.generator_labels, self.max_grad_norm = generator_labels, max_grad_norm
        if init_from != "teacher" and not Path(init_from).is_file():
            raise ValueError(f"{type(self).__name__.lower()}: init_from '{init_from}' is not a file: give 'teacher' or the path of "
                             "a model.safetensors export of the student's architecture (runs/NAME/checkpoints/LABEL/model.safetensors).")
        self.init_from = init_from

    def starts_from_teacher(self) -> bool:
        return self.init_from == "teacher"

    def start_weights(self) -> dict[str, torch.Tensor]:
        """The generator's (and fake score's) first weights: the teacher's, or the ``init_from`` export."""
        if self.init_from == "teacher":
            if not any(True for _ in self.teacher.model.parameters()):
                raise ValueError(f"{type(self).__name__.lower()} starts from the teacher's weights and this teacher has none (an exact "
                                 "teacher such as analytic-mixture): set init_from to a model.safetensors export of the student's architecture.")
            return self.teacher.model.state_dict()
        start, own = load_file(self.init_from), self.student.state_dict()
        differ = own.keys() ^ start.keys() or {k for k in own if own[k].shape != start[k].shape}
        if differ:
            raise ValueError(f"{type(self).__name__.lower()}: init_from {self.init_from} is not an export of the student's architecture "
                             f"({len(differ)} weights differ, e.g. {min(differ)}): give the student the options it was trained with.")
        return start

    def initialise_networks(self) -> None:
        """The generator and the fake score start where ``init_from`` says (the fake score where the generator does)."""
        self.student.load_state_dict(self.start_weights())
        self.fake = trainable_copy(self.student)

    def setup(self, stage: str) -> None:
        check_denoiser(self.student, "dmd2")
        if self.teacher is None:
            raise ValueError("dmd2 distills a teacher: the recipe needs a `teacher:` section.")
        self.real_teacher = diffusion_teacher(self.teacher)
        if not getattr(self.student, "lora", None):  # setup again (a resumed fit): the adapters are already on
            self.initialise_networks()
            if self.lora_rank is not None:
                from anydistill.diffusion.lora import add_lora

                add_lora(self.student, self.lora_rank, self.lora_alpha)
        self.schedule = schedule_of(self.student)
        self.dm_times = dm_time_sampler(self.schedule, self.t_low, self.t_high, self.time_sampling)
        self.critic_times = KarrasTime() if self.time_sampling == "karras" else UniformTime()
        self.times = step_times(self.schedule, self.num_steps)
        tap = bottleneck_path(self.fake)
        self.discriminator = FeatureDiscriminator(feature_width(self.fake, tap, self.schedule), tap, self.schedule, self.critic_times,
                                                  hidden=self.head_hidden, loss=self.gan_loss, r1=self.r1)
        self.student.sampling = {"sampler": "multistep", "steps": [self.num_steps], "timesteps": {str(self.num_steps): self.times}}

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs: int) -> list[str]:
        if self.fake_weighting == "edm" and (getattr(self.student, "schedule", None), getattr(self.student, "prediction", None)) != ("edm", "x0"):
            return ["dmd2's fake_weighting: edm weights an x0 loss by sigma^-2 + sigma_d^-2 on the EDM schedule: build the models with "
                    "schedule: edm and prediction: x0, or set fake_weighting: none."]
        return []

    def configure_optimizers(self):
        spec = self.optimizer_spec
        generator = make_optimizer(spec, self.student.parameters())
        critic = make_optimizer(spec, [*self.fake.parameters(), *self.discriminator.parameters()], lr=self.fake_lr or spec.lr)
        return [generator, critic]

    def step(self, optimizer, loss: torch.Tensor, parameters) -> None:
        """One update of one network (manual optimisation: the trainer's clipping does not apply), its
        gradient norm clipped to ``max_grad_norm`` first when set."""
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(parameters), self.max_grad_norm)
        optimizer.step()

    # ------------------------------------------------------------------ the generator

    def step_time(self, k: int, n: int, device) -> torch.Tensor:
        return torch.full((n,), self.times[k], device=device)

    def generator_input(self, k: int, real: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The state at the generator's ``k``-th time: backward simulation (the generator's own first
        k steps from pure noise, no gradient) or real data noised there."""
        sch = self.schedule
        z = sch.sample_noise(real, None)
        t0 = self.step_time(0, real.shape[0], real.device)
        if self.student_inputs == "noised-data" and k > 0:
            return sch.add_noise(real, z, self.step_time(k, real.shape[0], real.device))
        x = sch.sigma(t0[:1].double()).float().item() * z
        with torch.no_grad():
            for j in range(k):  # as the multistep sampler: predict x0, re-noise to the next time
                x0 = predict(self.student, x, self.step_time(j, x.shape[0], x.device), cond, "x0")
                x = sch.add_noise(x0, sch.sample_noise(x0, None), self.step_time(j + 1, x.shape[0], x.device))
        return x

    def discriminate(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Logits ``[B]`` of the head on the fake score's bottleneck at ``x`` noised at a random level."""
        return self.discriminator.logits(self.fake, x, cond)

    def generator_objective(self, x: torch.Tensor, cond: torch.Tensor | None, k: int, real: torch.Tensor) -> torch.Tensor:
        """The generator's loss on its samples ``x [B, ...]`` made at its ``k``-th time, before the GAN
        term: the distribution-matching loss (subclasses change it; ``real`` is the data batch)."""
        loss = distribution_matching_loss(x, cond, self.real_teacher, self.fake, self.schedule, self.dm_times, self.cfg)
        self.log_train("train/loss_dm", loss, x.shape[0], prog_bar=True)
        return loss

    def batch_labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(the real batch's labels, the generator's)``, None for unconditional models; the generator's
        are the real ones, or (``generator_labels: uniform``) drawn uniformly over classes 0 .. K-1."""
        real_cond = batch["y"] if self.student.null_class is not None else None
        if real_cond is not None and self.generator_labels == "uniform":
            return real_cond, torch.randint(self.student.null_class, real_cond.shape, device=real_cond.device)
        return real_cond, real_cond

    def generator_gan_applies(self, k: int) -> bool:
        """Whether the GAN term joins the generator's loss at its ``k``-th step (always, here)."""
        return True

    def after_generator_step(self) -> None:
        """Called after each generator update (nothing here)."""

    def trains_critic(self) -> bool:
        """Whether the fake score (and discriminator) train; when not, the generator updates every iteration."""
        return True

    # ------------------------------------------------------------------ the step

    def iteration(self, batch_idx: int) -> int:
        return self.current_epoch * int(self.trainer.num_training_batches) + batch_idx

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_c = self.optimizers()[:2]
        real = batch["x"]
        real_cond, cond = self.batch_labels(batch)
        n = real.shape[0]
        k = int(torch.randint(self.num_steps, ()))
        x_in = self.generator_input(k, real, cond)
        t_k = self.step_time(k, n, real.device)
        gan = self.gan_weight_generator > 0 or self.gan_weight_discriminator > 0

        if not self.trains_critic() or self.iteration(batch_idx) % self.update_ratio == 0:  # the generator's turn (TTUR)
            x = predict(self.student, x_in, t_k, cond, "x0")
            loss_g = self.generator_objective(x, cond, k, real)
            if gan and self.gan_weight_generator > 0 and self.generator_gan_applies(k):
                loss_gan_g = self.discriminator.generator_loss(self.fake, x, cond)
                loss_g = loss_g + gan_weight(self.gan_weight_generator, self.gan_scale, x[0].numel()) * loss_gan_g
                self.log_train("train/loss_gan_generator", loss_gan_g, n)
            self.step(opt_g, loss_g, self.student.parameters())
            self.after_generator_step()
            fake_x = x.detach()
        else:
            with torch.no_grad():
                fake_x = predict(self.student, x_in, t_k, cond, "x0")
        if not self.trains_critic():
            return

        # The critic's turn, every iteration: denoising on generator samples (+ the discriminator).
        loss_c = fake_score_loss(self.fake, self.schedule, fake_x, cond, times=self.critic_times, weighting=self.fake_weighting)
        self.log_train("train/loss_fake", loss_c, n)
        if gan and self.gan_weight_discriminator > 0:
            loss_d = self.discriminator.discriminator_loss(self.fake, fake_x, real, cond, real_cond)
            loss_c = loss_c + gan_weight(self.gan_weight_discriminator, self.gan_scale, real[0].numel()) * loss_d
            self.log_train("train/loss_discriminator", loss_d, n)
        # zero_grad first also drops what the generator's GAN term left in the fake score's grads
        self.step(opt_c, loss_c, [*self.fake.parameters(), *self.discriminator.parameters()])
