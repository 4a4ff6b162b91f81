r"""`decoupled-dmd`: DMD with a guided teacher, split into its engine and its shield (Liu et al. 2025,
"Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the Shield"; the basis of
Z-Image-Turbo; no training code released, so this follows the paper's Eq. 6-8 and Algorithm 1).

With the real score guided at weight :math:`\alpha`, DMD's gradient is exactly

.. math:: \underbrace{s^c_\text{real} - s^c_\text{fake}}_{\text{DM}} + (\alpha - 1)\underbrace{(s^c_\text{real} - s^\varnothing_\text{real})}_{\text{CA}}

(`anydistill.diffusion.targets.decoupled_dmd_gradient`). The paper's finding: CFG augmentation (CA)
does the distilling, and distribution matching (DM) only keeps it from diverging, so

* ``terms``: ``ca+dm`` (both), ``ca`` (the engine alone: the output variance grows until training
  collapses) or ``dm`` (the shield alone: unguided DMD);
* ``regulariser``: what fills the shield's place: ``dm`` (the DM term), ``mean-var`` (Eq. 7: per
  sample, the KL from :math:`\mathcal N(\mu_i, \sigma_i^2)` over the sample's elements to the
  data's average :math:`(\mu, \sigma^2)`, estimated from each real batch) or ``gan`` (DMD2's GAN
  term alone, `gan_weight_generator` > 0);
* ``schedule``: each term re-noises the generator's sample on its own (Table 1):
  ``shared`` (one time and noise: exactly CFG-DMD), ``independent`` (two draws over the full
  range), ``constrained`` (both less noisy than the generator's input time), ``hybrid`` (the
  paper's best: CA constrained, DM over the full range). For the first step (pure noise in) the
  constraint is the full range.

Everything else is `dmd2`'s: the fake score (TTUR), backward simulation for ``num_steps`` > 1, the
GAN head on real data when its weights are above 0. ``cfg`` is :math:`\alpha`; the paper's setting
here is 4 steps with backward simulation.
"""

from __future__ import annotations

from typing import Literal

import torch

from anydistill.core.recipe import NonNegativeFloat
from anydistill.diffusion.common import predict
from anydistill.diffusion.distribution_matching import mean_variance_kl
from anydistill.diffusion.methods.dmd2 import DMD2
from anydistill.diffusion.targets import decoupled_dmd_gradient, dmd_surrogate_loss
from anydistill.diffusion.timesteps import UniformTime


class DecoupledDMD(DMD2):
    """Decoupled DMD; see the module docstring. Every `dmd2` option applies.

    Args:
        cfg: the real score's guidance weight alpha (needed: the CA term is (alpha - 1) times a
            conditional-minus-unconditional difference).
        terms: ``ca+dm``, ``ca`` or ``dm``.
        regulariser: ``dm``, ``mean-var`` or ``gan`` (the shield, used where ``terms`` has ``dm``).
        regulariser_weight: the mean-var KL's weight against the CA surrogate (1).
        schedule: ``shared``, ``independent``, ``constrained`` or ``hybrid``.
        normalise: ``per-term`` (each term by DMD2's normaliser at its own level) or ``joint`` (both by
            the DM level's: the paper does not say; see `decoupled_dmd_gradient`).
    """

    paper = "Liu et al. 2025, Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the Shield"

    def __init__(self, student, teacher=None, optimizer=None, *, cfg: float,
                 terms: Literal["ca+dm", "ca", "dm"] = "ca+dm", regulariser: Literal["dm", "mean-var", "gan"] = "dm",
                 regulariser_weight: NonNegativeFloat = 1.0,
                 schedule: Literal["shared", "independent", "constrained", "hybrid"] = "hybrid",
                 normalise: Literal["per-term", "joint"] = "per-term", **dmd2_options):
        super().__init__(student, teacher, optimizer, cfg=cfg, **dmd2_options)
        if regulariser == "gan" and "dm" in terms and self.gan_weight_generator == 0:
            raise ValueError("decoupled-dmd: regulariser: gan needs gan_weight_generator > 0 (the GAN term is the shield).")
        self.terms, self.regulariser, self.regulariser_weight, self.time_schedule = terms, regulariser, regulariser_weight, schedule
        self.normalise = normalise

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.student.null_class is None:
            raise ValueError("decoupled-dmd needs a class-conditional student and teacher (the CA term is a conditional-minus-"
                             "unconditional difference): use class-conditional data such as toy2d-conditional or digits.")

    def term_time(self, constrained: bool, k: int, n: int, device) -> torch.Tensor:
        """``[n]`` re-noising times: DMD2's range, or (``constrained``) its part below the generator's
        ``k``-th input time (less noisy; the first step's input is pure noise, so its range is whole)."""
        if not constrained or k == 0:
            return self.dm_times.sample(n, self.schedule, generator=None, device=device)
        span = self.schedule.t_max - self.schedule.t_min
        low = self.schedule.t_min + self.t_low * span
        return UniformTime(low, max(min(self.times[k], self.schedule.t_min + self.t_high * span), low + 1e-6 * span)).sample(
            n, self.schedule, generator=None, device=device)

    def generator_objective(self, x: torch.Tensor, cond: torch.Tensor | None, k: int, real: torch.Tensor) -> torch.Tensor:
        n, sch = x.shape[0], self.schedule
        use_dm = "dm" in self.terms and self.regulariser == "dm"
        use_ca = "ca" in self.terms
        ca = dm = None
        if use_ca:
            ca = (self.term_time(self.time_schedule in ("constrained", "hybrid"), k, n, x.device), sch.sample_noise(x, None))
        if use_dm:
            dm = ca if self.time_schedule == "shared" and ca is not None else (
                self.term_time(self.time_schedule == "constrained", k, n, x.device), sch.sample_noise(x, None))
        loss = x.new_zeros(())
        if use_ca or use_dm:
            grad = decoupled_dmd_gradient(
                x, float(self.cfg), lambda x_t, t: self.real_teacher.predict_pair(x_t, t, cond, kind="x0"),
                lambda x_t, t: predict(self.fake, x_t, t, cond, "x0"), sch, dm=dm, ca=ca, normalise=self.normalise)
            loss = dmd_surrogate_loss(x, grad, reduction="mean")
            self.log_train("train/loss_dm", loss, n, prog_bar=True)
        if "dm" in self.terms and self.regulariser == "mean-var":
            kl = mean_variance_kl(x, real)
            self.log_train("train/loss_mean_var", kl, n)
            loss = loss + self.regulariser_weight * kl
        return loss
