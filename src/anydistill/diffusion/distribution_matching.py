"""Pieces shared by `dmd` and `dmd2`: the trainable fake score, its denoising loss on generator
samples, and the distribution-matching loss of a generator's samples."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from anydistill.diffusion.common import predict
from anydistill.diffusion.schedules import NoiseSchedule
from anydistill.diffusion.targets import dmd_gradient, dmd_surrogate_loss
from anydistill.diffusion.teacher import DiffusionTeacher, denoiser_loss
from anydistill.diffusion.timesteps import KarrasTime, TimeSampler, UniformTime


def trainable_copy(model: nn.Module) -> nn.Module:
    """A trainable deep copy (DMD initialises its fake score from the teacher)."""
    return copy.deepcopy(model).train().requires_grad_(True)


def dm_time_sampler(schedule: NoiseSchedule, low_fraction: float, high_fraction: float, sampling: str = "uniform") -> TimeSampler:
    """``t ~ U`` over ``[low, high]`` fractions of the schedule's range (DMD: 0.02 T to 0.98 T), or
    (``karras``) a uniform index over those fractions of the Karras grid (DMD2's EDM code: 20 .. 980 of 1,000)."""
    if sampling == "karras":
        return KarrasTime(low=low_fraction, high=high_fraction)
    span = schedule.t_max - schedule.t_min
    return UniformTime(schedule.t_min + low_fraction * span, schedule.t_min + high_fraction * span)


def distribution_matching_loss(
    x: Tensor, cond: Tensor | None, teacher: DiffusionTeacher, fake: nn.Module, schedule: NoiseSchedule,
    times: UniformTime, cfg: float | None,
) -> Tensor:
    """DMD's KL gradient on generator samples ``x [B, ...]`` applied through
    ``0.5 ||x - sg(x - grad)||^2`` (mean over elements, as in DMD2's code); see
    `anydistill.diffusion.targets.dmd_gradient`. The real score is the teacher (guided by ``cfg``)."""
    t = times.sample(x.shape[0], schedule, generator=None, device=x.device)
    noise = schedule.sample_noise(x, None)
    guidance = cfg if cond is not None else None
    grad = dmd_gradient(
        x, t, noise,
        lambda x_t, tt: teacher.predict(x_t, tt, cond, kind="x0", cfg=guidance),
        lambda x_t, tt: predict(fake, x_t, tt, cond, "x0"),
        schedule,
    )
    return dmd_surrogate_loss(x, grad, reduction="mean")


def fake_score_loss(fake: nn.Module, schedule: NoiseSchedule, x: Tensor, cond: Tensor | None, *,
                    times: TimeSampler | None = None, weighting: str = "none") -> Tensor:
    """The fake score's denoising loss on (detached) generator samples, in its own prediction kind,
    ``t`` from ``times`` (default uniform over the schedule's range): it tracks the score of the
    generator's distribution. DMD2's EDM code: ``KarrasTime()`` and ``weighting="edm"``, the x0 loss
    weighted :math:`\sigma^{-2} + \sigma_d^{-2}` (`denoiser_loss`)."""
    x = x.detach()
    t = (times or UniformTime()).sample(x.shape[0], schedule, generator=None, device=x.device)
    return denoiser_loss(fake, schedule, x, t, schedule.sample_noise(x, None), cond, fake.prediction, weighting,
                         preconditioning=fake.preconditioning)


def one_step_input(schedule: NoiseSchedule, z: Tensor) -> tuple[Tensor, Tensor]:
    """The generator's input at ``t_max``: ``(sigma(t_max) z, t [B])`` (pure noise on every schedule here)."""
    t = torch.full((z.shape[0],), float(schedule.t_max), device=z.device)
    return schedule.sigma(t[:1].double()).float().item() * z, t


def mean_variance_kl(x: Tensor, reference: Tensor) -> Tensor:
    r"""Decoupled DMD's mean-variance regulariser (Liu et al. 2025, Eq. 7): per sample, the mean and
    variance :math:`(\mu_i, \sigma_i^2)` over all its elements, and the closed-form KL to the
    reference's average statistics :math:`(\mu, \sigma^2)` (the paper: averages over sampled real data),

    .. math:: \frac1B\sum_i \tfrac12\Big[\frac{\sigma_i^2 + (\mu_i - \mu)^2}{\sigma^2} - 1 - \log\frac{\sigma_i^2}{\sigma^2}\Big].

    Args:
        x: generator samples ``[B, ...]`` (with gradient).
        reference: real samples ``[R, ...]`` giving :math:`\mu` = the mean of their per-sample means and
            :math:`\sigma^2` = the mean of their per-sample variances (no gradient).

    Returns:
        A scalar, 0 when every sample has the reference's statistics.
    """
    flat, ref = x.flatten(1).float(), reference.detach().flatten(1).float()
    mu, var = flat.mean(1), flat.var(1, unbiased=False).clamp_min(1e-12)
    mu_ref, var_ref = ref.mean(1).mean(), ref.var(1, unbiased=False).mean()
    return 0.5 * ((var + (mu - mu_ref) ** 2) / var_ref - 1 - torch.log(var / var_ref)).mean()
