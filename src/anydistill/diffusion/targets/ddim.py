"""`ddim_step`: the deterministic DDIM update from an ``x0`` prediction (Song+ 2021)."""

from __future__ import annotations

from torch import Tensor

from anydistill.core.checks import raise_problems
from anydistill.diffusion.schedules import NoiseSchedule, expand_t
from anydistill.diffusion.targets.checks import as_time, same_shape_problems


def ddim_step(
    x_t: Tensor, x0_hat: Tensor, t: Tensor | float, s: Tensor | float, schedule: NoiseSchedule
) -> Tensor:
    r"""The deterministic DDIM update (Song, Meng & Ermon 2021, Eq. 12 with :math:`\sigma = 0`)
    from ``t`` to ``s`` given an ``x0`` prediction, on any Gaussian path:

    .. math::
        \hat\epsilon = \frac{x_t - \alpha_t \hat x_0}{\sigma_t},\qquad
        x_s = \alpha_s \hat x_0 + \sigma_s \hat\epsilon
            = \frac{\sigma_s}{\sigma_t} x_t
              + \Big(\alpha_s - \frac{\sigma_s}{\sigma_t}\alpha_t\Big)\hat x_0 .

    The implied noise is kept and ``(x0_hat, eps_hat)`` are moved to time ``s``; with the exact
    ``x0`` of a point-mass data distribution the result lies exactly on the path. Official
    counterpart: ``ddim_step`` / the teacher steps of ``Model.training_losses`` in
    google-research ``diffusion_distillation/diffusion_distillation/dpm.py`` (there in log-SNR).
    Equals `DDIMSampler` with ``eta = 0`` (one of its steps).

    Args:
        x_t: the current state ``[B, ...]``.
        x0_hat: the ``x0`` prediction at ``(x_t, t)``, ``[B, ...]``.
        t: the current time, ``[B]`` or 0-dim (or a float); ``sigma(t) > 0`` (not ``t_min`` of a
            schedule with ``sigma(t_min) = 0``, where the implied noise is undefined).
        s: the target time, ``[B]`` or 0-dim (or a float); any ``s`` (``s < t`` to denoise).
        schedule: the `NoiseSchedule`.

    Returns:
        ``x_s``, ``[B, ...]`` in the dtype of ``x_t``. Differentiable in ``x_t`` and ``x0_hat``.
    """
    raise_problems(same_shape_problems("ddim_step", x_t=x_t, x0_hat=x0_hat))
    t, s = as_time(t), as_time(s)
    ratio = schedule.sigma(s) / schedule.sigma(t)  # in the dtype of the times
    coef_x0 = schedule.alpha(s) - ratio * schedule.alpha(t)
    return expand_t(ratio, x_t) * x_t + expand_t(coef_x0, x_t) * x0_hat
