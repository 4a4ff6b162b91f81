"""`StochasticSampler`: EDM's churned sampler (Karras et al. 2022, Algorithm 2) with Euler steps."""

from __future__ import annotations

import math
import numbers

import torch

from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.diffusion.samplers.base import Sampler, Spacing, _c, grid_problems, time_grid
from anydistill.diffusion.schedules import NoiseSchedule


class StochasticSampler(Sampler):
    r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), with Euler steps, for any
    schedule.

    Choice: of the stochastic samplers, this is the one that is neither `DDIMSampler` with
    ``eta = 1`` (DDPM ancestral sampling, which that class already gives on every schedule) nor
    the denoise-and-renoise of `MultistepSampler`. It adds noise of a tunable amount ("churn")
    before each deterministic step, which corrects errors made earlier on the path.

    Step ``i`` (grid ``t_0 > ... > t_N``): raise the noise level of ``x_i`` by the factor
    ``1 + gamma_i`` by running the forward process from ``t_i`` to ``t_hat_i``,

    .. math::
        \hat x_i = r_i\,x_i + S_\text{noise}\sqrt{\sigma(\hat t_i)^2 - r_i^2\,\sigma(t_i)^2}\;z,
        \qquad r_i = \frac{\alpha(\hat t_i)}{\alpha(t_i)},

        \hat t_i = \texttt{t\_from\_edm\_sigma}\big((1 + \gamma_i)\,\texttt{edm\_sigma}(t_i)\big),

    (for `EDM`: :math:`\hat x = x + \sqrt{\hat t^2 - t^2}\,S_\text{noise} z`, as in the paper),
    then take an Euler step of the probability-flow ODE from :math:`(\hat x_i, \hat t_i)` to
    ``t_{i+1}``, with
    :math:`\gamma_i = \min(S_\text{churn}/N, \sqrt2 - 1)` where ``edm_sigma(t_i)`` lies in
    ``[s_tmin, s_tmax]`` and 0 elsewhere. Because the ``gamma_i`` are fixed, the ``t_hat_i`` are
    known in advance: ``timesteps`` lists them (the model is evaluated at the churned state, unlike
    diffusers' ``EulerDiscreteScheduler(s_churn)``, which churns inside ``step``, after the model
    was evaluated at the un-churned one), and
    `step` ends each step with the next churn, so its result is the state at the next listed time.
    ``gamma_0 = 0`` (the start is ``t_max``) and ``t_hat_i`` is capped at ``t_{i-1}`` so that
    ``timesteps`` never increases. EDM's Algorithm 2 adds Heun's correction; this class does not
    (k-diffusion's ``sample_euler`` with ``s_churn``); its error is first order.

    Args:
        schedule: the noise schedule.
        s_churn: total churn; ``gamma_i = min(s_churn / N, sqrt(2) - 1)``; 0 is the
            deterministic Euler sampler. EDM's ImageNet-64 setting is 40, with s_tmin 0.05,
            s_tmax 50 and s_noise 1.003, at 256 steps.
        s_tmin, s_tmax: churn only where the EDM noise level ``edm_sigma(t_i)`` is in this range.
        s_noise: inflation of the added noise (EDM: 1.003-1.007); 1 keeps the marginals exact.
        spacing, rho, t_start: the grid (`time_grid`).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        s_churn: float = 40.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        *,
        spacing: Spacing = "uniform",
        rho: float = 7.0,
        t_start: float | None = None,
    ):
        super().__init__(schedule)
        problems = grid_problems(schedule, spacing, rho, t_start, "StochasticSampler")
        for name, value in (("s_churn", s_churn), ("s_noise", s_noise)):
            if not (is_finite_number(value) and value >= 0):
                problems.append(
                    f"The '{name}' parameter of StochasticSampler must be a float >= 0. "
                    f"Got {value!r}."
                )
        range_ok = True
        for name, value in (("s_tmin", s_tmin), ("s_tmax", s_tmax)):
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0):
                range_ok = False
                problems.append(
                    f"The '{name}' parameter of StochasticSampler must be a float >= 0 (inf "
                    f"allowed). Got {value!r}."
                )
        if range_ok and not s_tmin <= s_tmax:
            problems.append(
                "StochasticSampler needs s_tmin <= s_tmax. "
                f"Got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}."
            )
        raise_problems(problems)
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise
        self.spacing, self.rho, self.t_start = spacing, rho, t_start

    def _build(self, num_steps):
        sch = self.schedule
        grid = time_grid(sch, num_steps, spacing=self.spacing, rho=self.rho, t_start=self.t_start)
        gamma = min(self.s_churn / num_steps, math.sqrt(2) - 1)
        t_hat = grid.clone()
        for i in range(1, num_steps):  # t_hat_0 = t_0: the start; t_hat_N = t_N: the result
            level = float(sch.edm_sigma(grid[i]))
            if gamma > 0 and self.s_tmin <= level <= self.s_tmax:
                level_hat = torch.tensor((1 + gamma) * level, dtype=torch.float64)
                t_hat[i] = sch.t_from_edm_sigma(level_hat).clamp(float(grid[i]), float(grid[i - 1]))
        self._grid, self._t_hat = grid, t_hat
        return t_hat[:-1]

    def _step(self, index, model_output, x_t, kind, generator):
        sch = self.schedule
        t_hat, s = self._t_hat[index], self._grid[index + 1]
        x_s = x_t + _c(s - t_hat, x_t) * self._velocity(model_output, x_t, t_hat, kind)
        s_hat = self._t_hat[index + 1]
        if s_hat == s:  # no churn (and the last step)
            return x_s
        # churn: the forward process from s to s_hat, x_{s_hat} = ratio x_s + std z
        ratio = sch.alpha(s_hat) / sch.alpha(s)
        variance = sch.sigma(s_hat) ** 2 - (ratio * sch.sigma(s)) ** 2
        std = self.s_noise * torch.sqrt(variance.clamp(min=0))
        return _c(ratio, x_t) * x_s + _c(std, x_t) * sch.sample_noise(x_s, generator)
