"""`EulerSampler`: Euler's method on the probability-flow ODE."""

from __future__ import annotations

from anydistill.core.checks import raise_problems
from anydistill.diffusion.samplers.base import Sampler, Spacing, _c, grid_problems, time_grid
from anydistill.diffusion.schedules import NoiseSchedule


class EulerSampler(Sampler):
    r"""Euler's method on the probability-flow ODE :math:`dx/dt = u(x, t)`:

    .. math::
        x_s = x_t + (s - t)\,\hat u,\qquad
        \hat u = \dot\alpha_t \hat x_0 + \dot\sigma_t \hat\epsilon,

    the velocity implied by the prediction (flow matching's sampler for `RectifiedFlow`; EDM's
    Euler sampler for `EDM`, where :math:`\hat u = (x_t - \hat x_0)/t`). First order: the endpoint
    error halves when the steps double.

    Args:
        schedule: the noise schedule.
        spacing, rho, t_start: the grid (`time_grid`).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        spacing: Spacing = "uniform",
        rho: float = 7.0,
        t_start: float | None = None,
    ):
        super().__init__(schedule)
        raise_problems(grid_problems(schedule, spacing, rho, t_start, "EulerSampler"))
        self.spacing, self.rho, self.t_start = spacing, rho, t_start

    def _build(self, num_steps):
        self._grid = time_grid(
            self.schedule, num_steps, spacing=self.spacing, rho=self.rho, t_start=self.t_start
        )
        return self._grid[:-1]

    def _step(self, index, model_output, x_t, kind, generator):
        t, s = self._grid[index], self._grid[index + 1]
        return x_t + _c(s - t, x_t) * self._velocity(model_output, x_t, t, kind)
