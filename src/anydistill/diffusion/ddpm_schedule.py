r"""`DDPMSchedule`: the discrete variance-preserving schedule of DDPM-trained models (diffusers'
``DDPMScheduler`` / ``DDIMScheduler`` and their kin), in continuous time.

A DDPM model was trained on ``N`` steps ``n = 0 .. N-1`` with
``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps``, ``abar_n = prod_{i <= n} (1 - beta_i)``, and
its network takes the step index ``n`` as its time input. Here ``t = n / (N - 1)`` in ``[0, 1]``
and, between the grid points, the log-SNR ``lambda = log(abar / (1 - abar))`` is interpolated
linearly in ``t``, so that

.. math::  \alpha(t)^2 = \operatorname{sigmoid}(\lambda(t)),\qquad
           \sigma(t)^2 = \operatorname{sigmoid}(-\lambda(t)),

exact at every training step (``alpha(n / (N-1))^2 = abar_n``), variance preserving everywhere
(so ``v = alpha eps - sigma x0`` is diffusers' ``v_prediction``), and monotone. The network is
fed ``t * (N - 1)``, the step index (the ``diffusers-folder`` builder sets that time scale).
Unlike `VPCosine`, ``sigma(t_min) = sqrt(beta_0) > 0`` and ``alpha(t_max) > 0``: the ends are
the first and last training steps, as in diffusers.

Betas, by ``beta_schedule`` (diffusers' definitions, written from their formulas):

* ``"linear"``: ``beta_n`` evenly spaced from ``beta_start`` to ``beta_end``;
* ``"scaled_linear"``: ``sqrt(beta_n)`` evenly spaced from ``sqrt(beta_start)`` to
  ``sqrt(beta_end)`` (Stable Diffusion's);
* ``"squaredcos_cap_v2"``: ``beta_n = min(1 - f((n+1)/N) / f(n/N), 0.999)`` with
  ``f(u) = cos((u + 0.008) / 1.008 * pi / 2)^2`` (Nichol & Dhariwal 2021).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anydistill.core.checks import choice_problems, is_finite_number, raise_problems
from anydistill.diffusion.schedules import NoiseSchedule

BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")


def ddpm_alphas_cumprod(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str
) -> Tensor:
    """``abar_n`` for ``n = 0 .. N-1``, ``[N]`` float64 (see the module docstring)."""
    n = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    else:
        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class DDPMSchedule(NoiseSchedule):
    """A DDPM-trained model's schedule on ``t`` in ``[0, 1]`` (module docstring).

    Args:
        num_train_timesteps: ``N >= 2``, the training steps (diffusers' ``num_train_timesteps``).
        beta_start, beta_end: the first and last beta (``0 < beta < 1``).
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``.
    """

    t_min = 0.0
    t_max = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
    ):
        problems = choice_problems(beta_schedule, BETA_SCHEDULES, name="beta_schedule", owner="DDPMSchedule")
        if not (isinstance(num_train_timesteps, int) and not isinstance(num_train_timesteps, bool) and num_train_timesteps >= 2):
            problems.append(f"The 'num_train_timesteps' parameter of DDPMSchedule must be an int >= 2. Got {num_train_timesteps!r}.")
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not (is_finite_number(value) and 0 < value < 1):
                problems.append(f"The '{name}' parameter of DDPMSchedule must be a float in (0, 1). Got {value!r}.")
        raise_problems(problems)
        self.num_train_timesteps, self.beta_start, self.beta_end = num_train_timesteps, beta_start, beta_end
        self.beta_schedule = beta_schedule
        self._tables: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _lam(self, like: Tensor) -> Tensor:
        """The log-SNR at the ``N`` training steps, ``[N]``, on ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            abar = ddpm_alphas_cumprod(self.num_train_timesteps, self.beta_start, self.beta_end, self.beta_schedule)
            self._tables[key] = torch.log(abar / (1 - abar)).to(device=like.device, dtype=like.dtype)
        return self._tables[key]

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(lambda(t), d lambda / dt)``; outside ``[0, 1]`` the end segments are extrapolated."""
        lam = self._lam(t)
        steps = self.num_train_timesteps - 1
        tau = t * steps
        i = tau.floor().clamp(0, steps - 1).long()
        slope = lam[i + 1] - lam[i]
        return lam[i] + (tau - i.to(t.dtype)) * slope, slope * steps

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self._segment(t)[0]).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self._segment(t)[0]).sqrt()

    def d_alpha(self, t: Tensor) -> Tensor:
        # d sqrt(sigmoid(l)) / dl = alpha sigma^2 / 2
        lam, d_lam = self._segment(t)
        return 0.5 * torch.sigmoid(lam).sqrt() * torch.sigmoid(-lam) * d_lam

    def d_sigma(self, t: Tensor) -> Tensor:
        lam, d_lam = self._segment(t)
        return -0.5 * torch.sigmoid(-lam).sqrt() * torch.sigmoid(lam) * d_lam

    def t_from_edm_sigma(self, edm_sigma: Tensor) -> Tensor:
        # edm_sigma = sigma / alpha = exp(-lambda / 2); lambda decreases along the grid
        target = -2 * torch.log(edm_sigma)
        lam = self._lam(edm_sigma)
        steps = self.num_train_timesteps - 1
        i = (torch.searchsorted(-lam, -target.contiguous()) - 1).clamp(0, steps - 1)
        frac = (target - lam[i]) / (lam[i + 1] - lam[i])
        return (i.to(edm_sigma.dtype) + frac) / steps
