r"""Phased DMD's subinterval targets (Fan et al. 2025, "Phased DMD: Few-step Distribution Matching
Distillation via Score Matching within Subintervals"; training code not released).

A phase's generator outputs an intermediate state :math:`x_s` (``s`` its phase's end time), not a
clean sample, and everything is taken from the forward transition
:math:`q(x_t \mid x_s) = \mathcal N(\alpha_{t|s} x_s, \sigma_{t|s}^2 I)`, with
:math:`\alpha_{t|s} = \alpha_t/\alpha_s` and :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2\sigma_s^2`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.diffusion.schedules import NoiseSchedule, expand_t
from anydistill.diffusion.targets.checks import ModelFn, as_time, batch_t


def transition(schedule: NoiseSchedule, s: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``(alpha_s, sigma_s, alpha_{t|s}, sigma_{t|s})``, each broadcast to ``like`` (float64 inside)."""
    s64, t64 = s.double(), t.double()
    a_s, sig_s, a_t, sig_t = schedule.alpha(s64).clamp(min=0), schedule.sigma(s64), schedule.alpha(t64).clamp(min=0), schedule.sigma(t64)
    a_ts = a_t / a_s
    sig_ts = (sig_t**2 - a_ts**2 * sig_s**2).clamp(min=0).sqrt()
    return tuple(expand_t(v, like).to(torch.promote_types(like.dtype, torch.float32)) for v in (a_s, sig_s, a_ts, sig_ts))


def subinterval_noise(x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    r""":math:`x_t = \alpha_{t|s} x_s + \sigma_{t|s}\epsilon` for ``t > s`` (``x_s [B, ...]``, ``s``, ``t [B]``)."""
    _, _, a_ts, sig_ts = transition(schedule, batch_t(as_time(s), x_s, "subinterval_noise"), batch_t(as_time(t), x_s, "subinterval_noise"), x_s)
    return (a_ts * x_s + sig_ts * noise).to(x_s.dtype)


def subinterval_x0_target(x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
    r"""The unbiased x0 regression target of a fake score trained on states :math:`x_s` (Eq. 13, x0 form)
    and its weight:

    .. math::
        T = \frac{x_s}{\alpha_s} - \frac{\alpha_t\sigma_s^2}{\alpha_s^2\sigma_{t|s}}\,\epsilon,\qquad
        w = \min(1,\ 10\,\sigma_{t|s}^2),

    for :math:`x_t` = `subinterval_noise` ``(x_s, s, t, noise)``. :math:`E[T \mid x_t] = E[x_0 \mid x_t]`
    whatever the data (the noises in :math:`x_t` have conditional means proportional to their
    loadings), so the fake score learns the generator's marginal score at ``t`` from ``x_s`` alone; the
    naive :math:`x_s/\alpha_s` is biased unless :math:`\sigma_s = 0`. The weight is the paper's
    ``clamp(1/sigma_{t|s}^2, <= 10)`` on the residual scaled by :math:`\sigma_{t|s}`, which tames the
    target's variance as ``t -> s``. At ``s = 0`` (clean states) it is the usual x0 target.

    Returns:
        ``(target [B, ...], weight [B, 1, ...])`` without gradient.
    """
    s, t = batch_t(as_time(s), x_s, "subinterval_x0_target"), batch_t(as_time(t), x_s, "subinterval_x0_target")
    a_s, sig_s, a_ts, sig_ts = transition(schedule, s, t, x_s)
    a_t = a_ts * a_s
    with torch.no_grad():
        target = x_s / a_s - torch.nan_to_num(a_t * sig_s**2 / (a_s**2 * sig_ts)) * noise
        return target, (10 * sig_ts**2).clamp(max=1)


def phased_dm_gradient(x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor, real_score_x0_fn: ModelFn, fake_score_x0_fn: ModelFn,
                       schedule: NoiseSchedule) -> Tensor:
    r"""DMD's gradient on an intermediate state :math:`x_s`, from both scores at
    :math:`x_t \sim q(x_t \mid x_s)`, ``t > s``:

    .. math:: \text{grad} = \frac{\hat x_0^\text{fake}(x_t) - \hat x_0^\text{real}(x_t)}{\operatorname{mean}|x_s/\alpha_s - \hat x_0^\text{real}(x_t)|}.

    The chain rule through :math:`x_t` gives :math:`\alpha_{t|s}(s_\text{fake} - s_\text{real})`, and DMD's
    weight (here :math:`\sigma_t^2 / (\alpha_t\alpha_{t|s})` over the normaliser, in the clean scale
    :math:`x_s/\alpha_s`) leaves the expression above; at ``s = 0`` it is `dmd_gradient` exactly.

    Returns:
        ``grad [B, ...]`` without gradient.
    """
    s, t = batch_t(as_time(s), x_s, "phased_dm_gradient"), batch_t(as_time(t), x_s, "phased_dm_gradient")
    dtype = torch.promote_types(x_s.dtype, torch.float32)
    with torch.no_grad():
        x = x_s.detach()
        a_s = transition(schedule, s, t, x)[0]
        x_t = subinterval_noise(x, s, t, noise, schedule)
        real, fake = real_score_x0_fn(x_t, t).to(dtype), fake_score_x0_fn(x_t, t).to(dtype)
        dims = tuple(range(1, x.ndim))
        distance = (x.to(dtype) / a_s - real).abs()
        return torch.nan_to_num((fake - real) / (distance.mean(dim=dims, keepdim=True) if dims else distance))
