"""`MultistepSampler`: denoise, then re-noise (consistency models' multistep sampler, LCM, DMD2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.diffusion.samplers.base import Sampler, _c
from anydistill.diffusion.schedules import NoiseSchedule


class MultistepSampler(Sampler):
    r"""Denoise, then re-noise: the multistep sampler of consistency models (Song et al. 2023,
    Algorithm 1) and of diffusers' ``LCMScheduler``, used by DMD2 and its descendants.

    At each given time :math:`\tau_k` predict :math:`\hat x_0` from :math:`x_{\tau_k}`; if
    another time follows, draw fresh noise and move the prediction there,
    :math:`x_{\tau_{k+1}} = \alpha(\tau_{k+1})\hat x_0 + \sigma(\tau_{k+1}) z`,
    :math:`z \sim \mathcal N(0, \texttt{noise\_std}^2 I)`; after the last time return
    :math:`\hat x_0`. NFE = K. With a consistency function (a flow map to the data end) every K
    gives the data distribution; with a denoiser :math:`E[x_0|x_t]` the mean is right but the
    spread shrinks (each output is a posterior mean).

    Args:
        schedule: the noise schedule.
        timesteps: the ``K >= 1`` evaluation times, strictly decreasing, in ``[t_min, t_max]``
            (e.g. DMD2's ``[0.999, 0.749, 0.499, 0.249]`` on a ``[0, 1]`` schedule). `set_timesteps`
            takes ``num_steps = K``.
    """

    def __init__(self, schedule: NoiseSchedule, timesteps: Sequence[float] | Tensor):
        super().__init__(schedule)
        values = timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps
        if (
            not isinstance(values, Sequence)
            or isinstance(values, str)
            or not values
            or not all(is_finite_number(v) for v in values)
        ):
            raise_problems(
                [
                    "The 'timesteps' parameter of MultistepSampler must be a non-empty list of "
                    f"finite floats. Got {timesteps!r}."
                ]
            )
        values = [float(v) for v in values]
        problems = []
        if any(a <= b for a, b in zip(values, values[1:])):
            problems.append(
                f"The 'timesteps' of MultistepSampler must be strictly decreasing (noise to data). "
                f"Got {values}."
            )
        outside = [v for v in values if not schedule.t_min <= v <= schedule.t_max]
        if outside:
            problems.append(
                f"The 'timesteps' of MultistepSampler must lie in {type(schedule).__name__}'s "
                f"range [{schedule.t_min}, {schedule.t_max}]. Got {outside}."
            )
        raise_problems(problems)
        self.timesteps_list = values

    def _build(self, num_steps):
        if num_steps != len(self.timesteps_list):
            raise_problems(
                [
                    f"MultistepSampler has {len(self.timesteps_list)} timesteps; set_timesteps got "
                    f"num_steps={num_steps!r}. Pass num_steps={len(self.timesteps_list)}."
                ]
            )
        return torch.tensor(self.timesteps_list, dtype=torch.float64)

    def _step(self, index, model_output, x_t, kind, generator):
        sch = self.schedule
        x0 = sch.convert(model_output, x_t, self._times[index], kind, "x0")
        if index + 1 == len(self._times):
            return x0
        s = self._times[index + 1]
        return _c(sch.alpha(s), x0) * x0 + _c(sch.sigma(s), x0) * sch.sample_noise(x0, generator)

    def __repr__(self) -> str:
        return f"MultistepSampler(schedule={self.schedule!r}, timesteps={self.timesteps_list!r})"
