"""`HeunSampler`: EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.core.checks import raise_problems
from anydistill.diffusion.samplers.base import Sampler, Spacing, _c, grid_problems, time_grid
from anydistill.diffusion.schedules import NoiseSchedule


class HeunSampler(Sampler):
    r"""Heun's second-order method on the probability-flow ODE: EDM's Algorithm 1 (Karras et al.
    2022), deterministic, in the schedule's time ``t`` (for `EDM`, ``t`` is sigma and this is the
    algorithm as written).

    For the step ``t_i -> t_{i+1}``, with :math:`d_i = \hat u(x_i, t_i)`:

    .. math::
        \tilde x = x_i + (t_{i+1} - t_i)\, d_i,\qquad
        x_{i+1} = x_i + (t_{i+1} - t_i)\,\tfrac12\big(d_i + \hat u(\tilde x, t_{i+1})\big),

    except the last step, to ``t_N = t_min``, which is Euler's (EDM skips the correction where
    ``t_{i+1} = 0``; at ``t_min`` the velocity can be singular, e.g. ``d_sigma`` of `VPCosine`).
    NFE = ``2N - 1``. Second order: the endpoint error quarters when the steps double.

    Two-call state machine (module docstring): ``timesteps`` is
    ``[t_0, t_1, t_1, ..., t_{N-1}, t_{N-1}]``; a call at the first copy of a time is the predictor
    (returns :math:`\tilde x`), at the second copy the corrector (returns :math:`x_{i+1}`, then
    the predictor's start state and slope are dropped).

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
        raise_problems(grid_problems(schedule, spacing, rho, t_start, "HeunSampler"))
        self.spacing, self.rho, self.t_start = spacing, rho, t_start

    def _build(self, num_steps):
        self._grid = time_grid(
            self.schedule, num_steps, spacing=self.spacing, rho=self.rho, t_start=self.t_start
        )
        # (is_corrector, i) per evaluation: the predictor of step i evaluates at t_i, its corrector
        # at t_{i+1}; the last step (to t_min) has no corrector.
        self._plan = []
        for i in range(num_steps):
            self._plan.append((False, i))
            if i + 1 < num_steps:
                self._plan.append((True, i))
        self._x_i: Tensor | None = None
        self._d_i: Tensor | None = None
        times = [self._grid[i + 1] if corrector else self._grid[i] for corrector, i in self._plan]
        return torch.stack(times)

    @property
    def state_in_first_order(self) -> bool:
        """True when the next `step` is a predictor (an Euler step from a point on the path)."""
        if self._times is None:
            raise ValueError(self._unset_message("state_in_first_order"))
        return self._step_index >= len(self._plan) or not self._plan[self._step_index][0]

    def _step(self, index, model_output, x_t, kind, generator):
        is_corrector, i = self._plan[index]
        t, s = self._grid[i], self._grid[i + 1]
        if not is_corrector:
            d = self._velocity(model_output, x_t, t, kind)
            if i + 1 < self._num_steps:
                self._x_i, self._d_i = x_t, d
            return x_t + _c(s - t, x_t) * d
        # corrector: x_t is the predictor's Euler point at s, model_output was evaluated there
        d_next = self._velocity(model_output, x_t, s, kind)
        x_next = self._x_i + _c(s - t, x_t) * (self._d_i + d_next) / 2
        self._x_i, self._d_i = None, None
        return x_next
