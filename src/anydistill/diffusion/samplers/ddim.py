"""`DDIMSampler`: DDIM (Song, Meng & Ermon 2021) with ``eta`` in ``[0, 1]``, on any schedule."""

from __future__ import annotations

import torch

from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.diffusion.samplers.base import Sampler, Spacing, _c, grid_problems, time_grid
from anydistill.diffusion.schedules import NoiseSchedule


class DDIMSampler(Sampler):
    r"""DDIM (Song, Meng & Ermon 2021), for any schedule.

    With :math:`\hat x_0, \hat\epsilon` the prediction at ``(x_t, t)`` and ``s`` the next time,

    .. math::
        x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\epsilon + c\,z,\qquad
        c = \eta\,\sigma_s \sqrt{1 - \mathrm{SNR}(t)/\mathrm{SNR}(s)},\qquad
        z \sim \mathcal N(0, \texttt{noise\_std}^2 I).

    ``eta = 0`` is deterministic DDIM: it keeps the predicted noise and moves ``(x0, eps)`` to
    time ``s`` (exact when the x0 prediction stays constant along the path). ``eta = 1`` makes
    :math:`c^2` the variance of the DDPM posterior :math:`q(x_s | x_t, x_0)`,
    :math:`\sigma_s^2 (1 - \alpha_t^2\sigma_s^2 / (\alpha_s^2\sigma_t^2))` (for any Gaussian
    path; Kingma et al. 2021, VDM): ancestral sampling, which for `VPCosine` is DDPM. Every
    ``eta`` in ``[0, 1]`` keeps the marginal of ``x_s`` (the noise variance is
    :math:`\sigma_s^2 - c^2 + c^2`) and :math:`c \le \eta\sigma_s`, so the form holds on every
    schedule, not only VP (on VP, ``c`` is DDIM's :math:`\sigma_t(\eta)`).

    On `RectifiedFlow` and `EDM` (``alpha``, ``sigma`` affine in ``t``) DDIM with ``eta = 0`` is
    the same map as `EulerSampler` for any prediction: ``x_t + (s - t)(d_alpha x0 + d_sigma eps)
    = alpha_s x0 + sigma_s eps``. On `VPCosine` and `TrigFlow` it is Euler's method in the
    variables ``(x / alpha, sigma / alpha)`` instead, a different first-order scheme.

    Args:
        schedule: the noise schedule.
        eta: in ``[0, 1]``; 0 (default) is deterministic.
        spacing, rho, t_start: the grid (`time_grid`).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        eta: float = 0.0,
        *,
        spacing: Spacing = "uniform",
        rho: float = 7.0,
        t_start: float | None = None,
    ):
        super().__init__(schedule)
        problems = grid_problems(schedule, spacing, rho, t_start, "DDIMSampler")
        if not (is_finite_number(eta) and 0 <= eta <= 1):
            problems.append(
                f"The 'eta' parameter of DDIMSampler must be a float in [0, 1]. Got {eta!r}."
            )
        raise_problems(problems)
        self.eta, self.spacing, self.rho, self.t_start = eta, spacing, rho, t_start

    def _build(self, num_steps):
        self._grid = time_grid(
            self.schedule, num_steps, spacing=self.spacing, rho=self.rho, t_start=self.t_start
        )
        return self._grid[:-1]

    def _step(self, index, model_output, x_t, kind, generator):
        sch = self.schedule
        t, s = self._grid[index], self._grid[index + 1]
        x0 = sch.convert(model_output, x_t, t, kind, "x0")
        eps = sch.convert(model_output, x_t, t, kind, "eps")
        alpha_s, sigma_s = sch.alpha(s), sch.sigma(s)
        if self.eta == 0:
            return _c(alpha_s, x_t) * x0 + _c(sigma_s, x_t) * eps
        # SNR(t)/SNR(s) written without divisions by zero: 0 at s = t_min (sigma_s = 0) and at a
        # t with alpha_t = 0.
        snr_ratio = (sch.alpha(t) * sigma_s / (alpha_s * sch.sigma(t))) ** 2
        c = self.eta * sigma_s * torch.sqrt((1 - snr_ratio).clamp(min=0))
        keep = torch.sqrt((sigma_s**2 - c**2).clamp(min=0))
        z = sch.sample_noise(x_t, generator)
        return _c(alpha_s, x_t) * x0 + _c(keep, x_t) * eps + _c(c, x_t) * z
