"""`OneStepSampler`: one model evaluation, the ``x0`` predicted from pure noise."""

from __future__ import annotations

import torch

from anydistill.core.checks import raise_problems
from anydistill.diffusion.samplers.base import Sampler, grid_problems
from anydistill.diffusion.schedules import NoiseSchedule


class OneStepSampler(Sampler):
    """One model evaluation: the result is the ``x0`` predicted at ``t_start`` (default
    ``t_max``) from the initial noise. NFE 1; ``set_timesteps`` accepts only ``num_steps=1``.

    For a one-step student (DMD, SwiftBrush, a 1-step consistency model). With a teacher (a
    denoiser ``E[x0 | x_t]``) this returns the posterior mean given pure noise, about the data
    mean: the reason one-step generation needs distillation. ``MultistepSampler(schedule, [t])``
    is the same sampler started at any time ``t``.

    Args:
        schedule: the noise schedule.
        t_start: the time of the evaluation; default ``schedule.t_max``.
    """

    def __init__(self, schedule: NoiseSchedule, *, t_start: float | None = None):
        super().__init__(schedule)
        raise_problems(grid_problems(schedule, "uniform", 7.0, t_start, "OneStepSampler"))
        self.t_start = t_start

    def _build(self, num_steps):
        if num_steps != 1:
            raise_problems(
                [f"OneStepSampler takes exactly 1 step; set_timesteps got num_steps={num_steps!r}."]
            )
        start = self.schedule.t_max if self.t_start is None else self.t_start
        return torch.tensor([float(start)], dtype=torch.float64)

    def _step(self, index, model_output, x_t, kind, generator):
        return self.schedule.convert(model_output, x_t, self._times[0], kind, "x0")
