r"""Training-time samplers: draw one time ``t`` per example, shape ``[B]``, for a `NoiseSchedule`.

Every sampler is a small object whose constructor holds its hyperparameters and whose `sample`
draws from a ``torch.Generator`` (the same seed gives the same times). Draws are made in float64 on
the generator's device (float32 on MPS, which has no float64), then moved to ``device`` and cast to
``dtype``; the times lie in the schedule's ``[t_min, t_max]``.

=================  ==========================================================================
`UniformTime`      uniform on ``[t_min, t_max]`` (or a sub-range)
`LogNormalTime`    EDM: ``ln sigma ~ N(P_mean, P_std^2)`` on the EDM noise level, mapped to ``t``
`LogitNormalTime`  SD3: ``t = sigmoid(N(m, s^2))``, rescaled to ``[t_min, t_max]``
`UShapedTime`      RF++: ``p(u) ∝ exp(a u) + exp(a (1 - u))`` on ``[0, 1]``, rescaled
`DiscreteTime`     a uniform choice among given times (few-step students, DMD2's fixed steps)
`KarrasTime`       a uniform index of the Karras rho-grid of noise levels (DMD2's EDM code)
=================  ==========================================================================
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.diffusion.schedules import NoiseSchedule


class TimeSampler(ABC):
    """Draws training times for a schedule; see the module docstring."""

    @abstractmethod
    def sample(
        self,
        n: int,
        schedule: NoiseSchedule,
        *,
        generator: torch.Generator | None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` times, shape ``[n]``, in ``[schedule.t_min, schedule.t_max]``.

        Args:
            n: how many (the batch size).
            schedule: the schedule whose time range (and, for `LogNormalTime`, noise levels) to use.
            generator: the source of randomness; ``None`` uses torch's global generator.
            device: where the result goes; default the generator's device.
            dtype: of the result.
        """

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class UniformTime(TimeSampler):
    """``t ~ U[low, high]``, by default the schedule's whole range ``[t_min, t_max]``.

    Args:
        low, high: an optional sub-range (``None``: the schedule's ``t_min`` / ``t_max``), e.g. to
            keep away from a singular endpoint or to train on part of the path (DMD's [0.02, 0.98]).
    """

    def __init__(self, low: float | None = None, high: float | None = None):
        problems = [
            f"The '{name}' parameter of UniformTime must be a finite float or None. Got {value!r}."
            for name, value in (("low", low), ("high", high))
            if value is not None and not is_finite_number(value)
        ]
        if not problems and low is not None and high is not None and not low < high:
            problems.append(f"UniformTime needs low < high. Got low={low!r}, high={high!r}.")
        raise_problems(problems)
        self.low, self.high = low, high

    def sample(self, n, schedule, *, generator, device=None, dtype=torch.float32):
        low = schedule.t_min if self.low is None else self.low
        high = schedule.t_max if self.high is None else self.high
        problems = [_n_problem(n, "UniformTime")]
        if not schedule.t_min <= low < high <= schedule.t_max:
            problems.append(
                f"UniformTime's range [{low}, {high}] must lie inside {type(schedule).__name__}'s "
                f"[{schedule.t_min}, {schedule.t_max}]."
            )
        raise_problems([p for p in problems if p])
        u, device = _uniform(n, generator, device)
        return (low + (high - low) * u).to(device=device, dtype=dtype)


class LogNormalTime(TimeSampler):
    r"""EDM's training distribution (Karras et al. 2022, Table 1): the EDM noise level is log-normal,

    .. math::  \ln\sigma \sim \mathcal N(P_\text{mean}, P_\text{std}^2),\qquad
               t = \text{schedule.t\_from\_edm\_sigma}(\sigma),

    clamped to ``[t_min, t_max]``. The noise level is that of ``x_t / alpha(t)`` (``sigma/alpha``
    times the schedule's ``noise_std``), so the same distribution over noise levels is used by every
    schedule: ``t = sigma`` for `EDM`, ``sigma / (1 + sigma)`` for `RectifiedFlow`, and
    ``arctan(sigma / sigma_d)`` for `TrigFlow` (sCM's sampler, Lu & Song 2024). For `EDM` the clamp
    at ``[0.002, 80]`` moves about 2e-5 of the mass with the default parameters.

    Args:
        p_mean, p_std: mean and std of ``ln sigma`` (-1.2 and 1.2 in EDM; sCM uses -1.0 and 1.4).
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        problems = []
        if not is_finite_number(p_mean):
            problems.append(
                f"The 'p_mean' parameter of LogNormalTime must be a finite float. Got {p_mean!r}."
            )
        if not (is_finite_number(p_std) and p_std > 0):
            problems.append(
                f"The 'p_std' parameter of LogNormalTime must be a float > 0. Got {p_std!r}."
            )
        raise_problems(problems)
        self.p_mean, self.p_std = p_mean, p_std

    def sample(self, n, schedule, *, generator, device=None, dtype=torch.float32):
        raise_problems([p for p in [_n_problem(n, "LogNormalTime")] if p])
        normal, device = _normal(n, generator, device)
        edm_sigma = torch.exp(self.p_mean + self.p_std * normal)
        t = schedule.t_from_edm_sigma(edm_sigma).clamp(schedule.t_min, schedule.t_max)
        return t.to(device=device, dtype=dtype)


class LogitNormalTime(TimeSampler):
    r"""The logit-normal distribution of Esser et al. (2024), "Scaling Rectified Flow Transformers
    for High-Resolution Image Synthesis" (Stable Diffusion 3):

    .. math::  u = \operatorname{sigmoid}(\xi),\ \xi \sim \mathcal N(m, s^2),\qquad
               t = t_\text{min} + (t_\text{max} - t_\text{min})\,u,

    which is SD3's sampler on a ``[0, 1]`` schedule. Its median is ``sigmoid(m)``.

    Args:
        mean, std: ``m`` and ``s`` (SD3 uses m = 0, s = 1).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        problems = []
        if not is_finite_number(mean):
            problems.append(
                f"The 'mean' parameter of LogitNormalTime must be a finite float. Got {mean!r}."
            )
        if not (is_finite_number(std) and std > 0):
            problems.append(
                f"The 'std' parameter of LogitNormalTime must be a float > 0. Got {std!r}."
            )
        raise_problems(problems)
        self.mean, self.std = mean, std

    def sample(self, n, schedule, *, generator, device=None, dtype=torch.float32):
        raise_problems([p for p in [_n_problem(n, "LogitNormalTime")] if p])
        normal, device = _normal(n, generator, device)
        u = torch.sigmoid(self.mean + self.std * normal)
        return (schedule.t_min + (schedule.t_max - schedule.t_min) * u).to(device=device, dtype=dtype)


class UShapedTime(TimeSampler):
    r"""The U-shaped distribution of Lee, Lin & Fanti (2024), "Improving the Training of Rectified
    Flows" (RF++), which puts more training weight near both ends of the path:

    .. math::
        p(u) \propto e^{a u} + e^{a (1 - u)} \propto \cosh\!\big(a (u - \tfrac12)\big),
        \qquad u \in [0, 1],\qquad t = t_\text{min} + (t_\text{max} - t_\text{min})\,u.

    This is what the official ``t_dist.py`` draws (a sample of density :math:`\propto e^{a u}`,
    mirrored to ``1 - u`` with probability 1/2), the symmetric "cosh-shaped" law that later work
    (Kim et al. 2024, Simple ReFlow) describes. Beware the form :math:`e^{a u} + e^{-a u}`, which
    is sometimes quoted for it: on ``[0, 1]`` that density is increasing, not U-shaped.

    Exact inverse-CDF sampler. Normalising, :math:`\int_0^1 \cosh(a(u - \frac12))\,du =
    \frac{2}{a}\sinh\frac a2`, so

    .. math::
        p(u) = \frac{a \cosh(a (u - \frac12))}{2 \sinh(a/2)},\qquad
        F(u) = \frac12 + \frac{\sinh(a (u - \frac12))}{2 \sinh(a/2)},\qquad
        F^{-1}(w) = \frac12 + \frac1a \operatorname{asinh}\!\big((2w - 1) \sinh\tfrac a2\big),

    and ``u = F^{-1}(w)`` with ``w ~ U[0, 1)``. One uniform draw per time; no rejection.

    Args:
        a: the sharpness of the U (4 in the paper); the density at the ends is ``cosh(a/2)`` times
            the density at the middle.
    """

    def __init__(self, a: float = 4.0):
        if not (is_finite_number(a) and a > 0):
            raise_problems([f"The 'a' parameter of UShapedTime must be a float > 0. Got {a!r}."])
        self.a = a

    def sample(self, n, schedule, *, generator, device=None, dtype=torch.float32):
        raise_problems([p for p in [_n_problem(n, "UShapedTime")] if p])
        w, device = _uniform(n, generator, device)
        u = 0.5 + torch.asinh((2 * w - 1) * math.sinh(self.a / 2)) / self.a
        return (schedule.t_min + (schedule.t_max - schedule.t_min) * u).to(device=device, dtype=dtype)


class DiscreteTime(TimeSampler):
    """A uniform choice among fixed ``timesteps`` (each with probability ``1/K``).

    For a few-step student trained at its own sampling times (e.g. DMD2's four steps, written
    ``[0.999, 0.749, 0.499, 0.249]`` on a ``[0, 1]`` schedule). The times must lie in the schedule's
    range; integer DDPM steps ``i`` of ``T`` are ``i / T`` on `VPCosine`.

    Args:
        timesteps: the ``K >= 1`` times to choose from.
    """

    def __init__(self, timesteps: Sequence[float]):
        values = list(timesteps) if isinstance(timesteps, Sequence) else None
        if not values or not all(is_finite_number(v) for v in values):
            raise_problems(
                [
                    "The 'timesteps' parameter of DiscreteTime must be a non-empty list of finite "
                    f"floats. Got {timesteps!r}."
                ]
            )
        self.timesteps = [float(v) for v in values]

    def sample_indices(
        self, n: int, *, generator: torch.Generator | None, device: torch.device | str | None = None
    ) -> Tensor:
        """``n`` indices into ``timesteps``, uniform over ``0 .. K - 1``, shape ``[n]`` (int64); for
        methods that also need a time's neighbours (the next step of a multi-step sampler)."""
        raise_problems([p for p in [_n_problem(n, "DiscreteTime")] if p])
        draw_device = generator.device if generator is not None else torch.device(device or "cpu")
        index = torch.randint(len(self.timesteps), (n,), generator=generator, device=draw_device)
        return index.to(draw_device if device is None else device)

    def sample(self, n, schedule, *, generator, device=None, dtype=torch.float32):
        outside = [v for v in self.timesteps if not schedule.t_min <= v <= schedule.t_max]
        if outside:
            raise_problems(
                [
                    f"DiscreteTime's timesteps must lie in {type(schedule).__name__}'s range "
                    f"[{schedule.t_min}, {schedule.t_max}]. Got {outside} (integer steps i of T are "
                    "written i / T on a [0, 1] schedule)."
                ]
            )
        index = self.sample_indices(n, generator=generator, device=device)
        table = torch.tensor(self.timesteps, dtype=torch.float64, device=index.device)
        return table[index].to(dtype=dtype)


class KarrasTime(TimeSampler):
    r"""A uniform index into the ``num`` noise levels of Karras et al.'s rho-schedule (DMD2's EDM
    training, ``main/edm/edm_guidance.py``: 1,000 levels, rho 7, sigma in [0.002, 80]):

    .. math::  \sigma_i = ig(\sigma_\max^{1/ho} + 	frac{N - 1 - i}{N - 1}(\sigma_\min^{1/ho}
               - \sigma_\max^{1/ho})ig)^ho,\qquad i = 0 \dots N - 1 \ (\sigma_0 = \sigma_\min),

    with ``i`` uniform over ``low * N .. min(high * N, N - 1)`` (DMD2's distribution matching:
    0.02 .. 0.98, i.e. 20 .. 980; its fake score and discriminator: the whole grid), mapped to ``t``
    by ``t_from_edm_sigma`` and clamped to the schedule's range. On `EDM` the median noise level is
    about 2.5, where `UniformTime` over ``[0.002, 80]`` has 40.

    Args:
        num, rho, sigma_min, sigma_max: the grid.
        low, high: the fractions of the index range drawn from.
    """

    def __init__(self, num: int = 1000, rho: float = 7.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 low: float = 0.0, high: float = 1.0):
        problems = []
        if not (isinstance(num, int) and num >= 2):
            problems.append(f"The 'num' parameter of KarrasTime must be an int >= 2. Got {num!r}.")
        if not (is_finite_number(rho) and rho > 0 and is_finite_number(sigma_min) and 0 < sigma_min < sigma_max):
            problems.append(f"KarrasTime needs rho > 0 and 0 < sigma_min < sigma_max. Got {rho!r}, {sigma_min!r}, {sigma_max!r}.")
        if not (is_finite_number(low) and is_finite_number(high) and 0 <= low < high <= 1):
            problems.append(f"KarrasTime needs 0 <= low < high <= 1. Got low={low!r}, high={high!r}.")
        raise_problems(problems)
        self.num, self.rho, self.sigma_min, self.sigma_max, self.low, self.high = num, float(rho), sigma_min, sigma_max, low, high

    def sigmas(self) -> Tensor:
        """The grid ``[num]`` (float64), increasing: index 0 is ``sigma_min``."""
        ramp = torch.linspace(0, 1, self.num, dtype=torch.float64)
        inverse = self.sigma_max ** (1 / self.rho) + ramp * (self.sigma_min ** (1 / self.rho) - self.sigma_max ** (1 / self.rho))
        return (inverse**self.rho).flip(0)

    def sample(self, n, schedule, *, generator, device=None, dtype=torch.float32):
        raise_problems([p for p in [_n_problem(n, "KarrasTime")] if p])
        draw_device, out_device, _ = _draw_setup(generator, device)
        first, last = int(self.low * self.num), min(int(self.high * self.num), self.num - 1)
        index = torch.randint(first, last + 1, (n,), generator=generator, device=draw_device)
        t = schedule.t_from_edm_sigma(self.sigmas().to(draw_device)[index]).clamp(schedule.t_min, schedule.t_max)
        return t.to(device=out_device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# helpers


def _draw_setup(
    generator: torch.Generator | None, device: torch.device | str | None
) -> tuple[torch.device, torch.device, torch.dtype]:
    """Where to draw (the generator's device), where the result goes, and the draw dtype."""
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    out_device = draw_device if device is None else torch.device(device)
    draw_dtype = torch.float32 if draw_device.type == "mps" else torch.float64
    return draw_device, out_device, draw_dtype


def _uniform(n: int, generator, device) -> tuple[Tensor, torch.device]:
    draw_device, out_device, draw_dtype = _draw_setup(generator, device)
    return torch.rand(n, generator=generator, device=draw_device, dtype=draw_dtype), out_device


def _normal(n: int, generator, device) -> tuple[Tensor, torch.device]:
    draw_device, out_device, draw_dtype = _draw_setup(generator, device)
    return torch.randn(n, generator=generator, device=draw_device, dtype=draw_dtype), out_device


def _n_problem(n: object, sampler: str) -> str | None:
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return None
    return f"The 'n' argument of {sampler}.sample must be an int >= 0. Got {n!r}."


