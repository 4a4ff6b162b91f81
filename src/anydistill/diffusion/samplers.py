r"""Samplers: turn a model's predictions into a path from noise to data, knowing nothing of it.

diffusers style (DESIGN.md, convention 7). A sampler holds a `NoiseSchedule` and its own
hyperparameters; `set_timesteps(num_steps)` builds its grid; ``timesteps`` lists, in order, the
time of **every model evaluation** (so ``len(timesteps)`` is the number of function evaluations,
NFE); and ``step(model_output, t, x_t, kind=...)`` takes the model's prediction at ``(x_t, t)`` and
returns the state at the next listed time (after the last one: the result). The loop is always::

    sampler.set_timesteps(num_steps)
    x = sampler.init_noise_sigma * z          # z = schedule.sample_noise(...): std noise_std
    for t in sampler.timesteps:
        x = sampler.step(model(x, t.expand(len(x))), t, x, kind="x0")

which is what `sample` runs (it also counts the model calls and can keep the trajectory).

===================  ===================================================================  ======
sampler              one step from ``t`` to the next grid time ``s``                      NFE
===================  ===================================================================  ======
`DDIMSampler`        ``x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z``, c set by eta  N
`EulerSampler`       ``x_s = x_t + (s - t) u``, ``u`` the probability-flow velocity         N
`HeunSampler`        EDM Algorithm 1: Euler predictor, trapezoidal corrector; last: Euler  2N - 1
`StochasticSampler`  EDM Algorithm 2 (Euler): churn the noise up to ``t_hat``, Euler down  N
`OneStepSampler`     ``x0 = prediction at t_max``                                          1
`MultistepSampler`   at each given time predict ``x0``, re-noise it to the next time       K
===================  ===================================================================  ======

Notation: ``x_t = alpha(t) x0 + sigma(t) eps`` with ``eps ~ N(0, noise_std^2 I)`` (see
`schedules`); ``x0``, ``eps`` and ``u = d_alpha x0 + d_sigma eps`` are the model's prediction
re-expressed with ``schedule.convert``, whatever ``kind`` it was made in.

**Grids** (`time_grid`): ``t_0 = t_start > t_1 > ... > t_N = t_min`` with ``t_start`` the
schedule's ``t_max`` unless given.

* ``spacing="uniform"`` (default): ``t_i = t_start + (i / N) (t_min - t_start)``, uniform in ``t``.
* ``spacing="karras"``: EDM's eq. 5 applied to ``t``,
  ``t_i = (t_start^(1/rho) + (i / N) (t_min^(1/rho) - t_start^(1/rho)))^rho`` (rho = 7), which
  crowds the steps near the data end. For the `EDM` schedule ``t`` is the noise level and this is
  EDM's grid over ``[sigma_min, sigma_max]``, except that EDM evaluates the model at ``sigma_min``
  and steps once more to ``sigma = 0``; here the path ends at ``t_min``, so an `EDM` sample keeps
  noise of std ``sigma_min`` (0.002 by default). Use it for `EDM`: uniform steps in sigma on
  ``[0.002, 80]`` leave almost no steps at low noise.

The model is never evaluated at ``t_min`` by the grid samplers (`MultistepSampler` evaluates it at
the times it is given). **Singular predictions**: an ``eps`` prediction cannot give ``x0`` where
``alpha(t) = 0``, which is ``t_max`` of `VPCosine`, `RectifiedFlow` and `TrigFlow` (the result is
inf/NaN). Start an eps-model below it (``t_start=0.999``, the last step of a 1000-step discrete
schedule) or predict ``x0``, ``v`` or ``velocity``.

**Start**: the initial state is ``init_noise_sigma * z = sigma(t_0) z``: exact where
``alpha(t_0) = 0``; elsewhere it drops the ``alpha(t_0) x0`` term, as diffusers does (for `EDM`
that is the data against noise of std 80; at ``t_start=0.999`` of `RectifiedFlow`, 0.001 x0).

**Heun's two evaluations per step.** `HeunSampler` follows diffusers' two-call state machine rather
than taking a ``model_fn`` in `step`: its ``timesteps`` list the predictor's and the corrector's
times (``[t_0, t_1, t_1, t_2, t_2, ..., t_{N-1}, t_{N-1}]``) and `step` alternates between the two,
keeping the step's start state and slope in between. That keeps the sampler free of the model
(convention 7), keeps one loop for every sampler (`sample`, a teacher's trajectory, a distillation
method's solver step), and keeps ``len(timesteps)`` equal to the NFE. The intermediate Euler
predictions it returns are not on the solution path; the final state is.

A sampler's state (the grid, the step counter, Heun's stored slope) is built by `set_timesteps`;
call it again to sample anew. `step` checks that it is called in order (``t`` must be the next
listed time): that comparison reads ``t`` on the host, one small device sync per step.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from anydistill.core.checks import choice_problems, is_finite_number, raise_problems
from anydistill.diffusion.schedules import PREDICTION_KINDS, NoiseSchedule, PredictionKind

Spacing = Literal["uniform", "karras"]
SPACINGS: tuple[str, ...] = ("uniform", "karras")


def time_grid(
    schedule: NoiseSchedule,
    num_steps: int,
    *,
    spacing: Spacing = "uniform",
    rho: float = 7.0,
    t_start: float | None = None,
) -> Tensor:
    """The ``num_steps + 1`` grid times ``t_start = t_0 > ... > t_N = t_min`` (module docstring).

    Args:
        schedule: whose ``t_min`` / ``t_max`` bound the grid.
        num_steps: ``N >= 1``.
        spacing: ``"uniform"`` in ``t`` or ``"karras"`` (EDM's rho spacing applied to ``t``).
        rho: the exponent of the karras spacing (7 in EDM).
        t_start: the first time; default ``schedule.t_max``; must lie in ``(t_min, t_max]``.

    Returns:
        ``[num_steps + 1]``, float64, on the CPU, strictly decreasing, with exact end points.
    """
    problems = grid_problems(schedule, spacing, rho, t_start, "time_grid")
    if not _is_count(num_steps):
        problems.append(
            f"The 'num_steps' argument of time_grid must be an int >= 1. Got {num_steps!r}."
        )
    raise_problems(problems)
    hi = schedule.t_max if t_start is None else float(t_start)
    lo = float(schedule.t_min)
    frac = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    if spacing == "uniform":
        grid = hi + frac * (lo - hi)
    else:
        grid = (hi ** (1 / rho) + frac * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    grid[0], grid[-1] = hi, lo  # exact ends, free of the power's rounding
    return grid


class Sampler(ABC):
    """Base of the samplers; see the module docstring for the protocol.

    Subclasses implement ``_build(num_steps)``, which sets up their grid and returns the evaluation
    times (float64, CPU), and ``_step(index, model_output, x_t, kind, generator)`` for the
    ``index``-th evaluation.
    """

    def __init__(self, schedule: NoiseSchedule):
        if not isinstance(schedule, NoiseSchedule):
            raise_problems(
                [
                    f"The 'schedule' parameter of {type(self).__name__} must be a NoiseSchedule "
                    f"(e.g. RectifiedFlow()). Got {schedule!r}."
                ]
            )
        self.schedule = schedule
        self._times: Tensor | None = None  # evaluation times, float64 on the CPU
        self._timesteps: Tensor | None = None  # the same on the user's device
        self._num_steps = 0
        self._step_index = 0

    # ------------------------------------------------------------------------------------------
    # the diffusers-style protocol

    def set_timesteps(self, num_steps: int, device: torch.device | str | None = None) -> None:
        """Build the grid for ``num_steps`` steps and reset the step counter.

        Args:
            num_steps: the number of steps ``N >= 1`` (the NFE is ``len(timesteps)``: ``N`` for
                every sampler but `HeunSampler`, ``2N - 1``).
            device: where `timesteps` is placed (float64, float32 on MPS); default the CPU.
        """
        if not _is_count(num_steps):
            raise_problems(
                [
                    f"The 'num_steps' argument of {type(self).__name__}.set_timesteps must be an "
                    f"int >= 1. Got {num_steps!r}."
                ]
            )
        times = self._build(num_steps)
        device = torch.device(device or "cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self._times, self._timesteps = times, times.to(device=device, dtype=dtype)
        self._num_steps, self._step_index = num_steps, 0

    @property
    def timesteps(self) -> Tensor:
        """The time of every model evaluation, in order, non-increasing: ``[NFE]``."""
        if self._timesteps is None:
            raise ValueError(self._unset_message("timesteps"))
        return self._timesteps

    @property
    def init_noise_sigma(self) -> float:
        """``sigma(timesteps[0])``: the initial state is ``init_noise_sigma * z`` with ``z`` the
        schedule's noise (std ``noise_std``)."""
        if self._times is None:
            raise ValueError(self._unset_message("init_noise_sigma"))
        return float(self.schedule.sigma(self._times[0]))

    def step(
        self,
        model_output: Tensor,
        t: Tensor | float,
        x_t: Tensor,
        *,
        kind: PredictionKind,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One sampler step.

        Args:
            model_output: the model's prediction at ``(x_t, t)``, ``[B, ...]``.
            t: the current time, the next entry of `timesteps` (a float, a 0-dim tensor or ``[B]``
                all equal to it).
            x_t: the current state, ``[B, ...]``.
            kind: what the model predicts: ``"x0"``, ``"eps"``, ``"v"`` or ``"velocity"``.
            generator: the source of the fresh noise of the stochastic samplers (ignored by the
                deterministic ones); ``None`` uses torch's global generator.

        Returns:
            The state at the next listed time, or the result after the last step; ``[B, ...]`` in
            ``x_t``'s dtype.

        Raises:
            ValueError: `set_timesteps` was not called, the grid is used up, ``t`` is not the next
                listed time, ``kind`` is unknown or the shapes differ.
        """
        name = type(self).__name__
        if self._times is None:
            raise ValueError(self._unset_message("step"))
        index = self._step_index
        if index >= len(self._times):
            raise ValueError(
                f"{name}.step was called more times than the {len(self._times)} model evaluations "
                f"of its grid (set_timesteps({self._num_steps})). Call set_timesteps again to "
                "sample anew."
            )
        problems = choice_problems(kind, PREDICTION_KINDS, name="kind", owner=f"{name}.step")
        if model_output.shape != x_t.shape:
            problems.append(
                f"{name}.step needs model_output and x_t of the same shape. Got "
                f"{tuple(model_output.shape)} and {tuple(x_t.shape)}."
            )
        expected = self._times[index]
        given = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
        scale = self.schedule.t_max - self.schedule.t_min
        if not torch.allclose(given, expected.expand_as(given), rtol=1e-5, atol=1e-6 * scale):
            problems.append(
                f"{name}.step expected t = {float(expected):.6g}, evaluation {index} of "
                f"{len(self._times)} on its grid; got t = {_short(given)}. Step through "
                "sampler.timesteps in order, after set_timesteps."
            )
        raise_problems(problems)
        x_next = self._step(index, model_output, x_t, kind, generator)
        self._step_index += 1
        return x_next

    # ------------------------------------------------------------------------------------------
    # for subclasses

    @abstractmethod
    def _build(self, num_steps: int) -> Tensor:
        """Set up the grid; return the evaluation times, float64 on the CPU."""

    @abstractmethod
    def _step(
        self,
        index: int,
        model_output: Tensor,
        x_t: Tensor,
        kind: str,
        generator: torch.Generator | None,
    ) -> Tensor:
        """The ``index``-th step, its arguments already checked."""

    def _velocity(self, out: Tensor, x: Tensor, t: Tensor, kind: str) -> Tensor:
        return self.schedule.convert(out, x, t, kind, "velocity")

    def _unset_message(self, what: str) -> str:
        return (
            f"{type(self).__name__}.{what} needs the grid: call "
            "sampler.set_timesteps(num_steps) first."
        )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_")
        )
        return f"{type(self).__name__}({fields})"


# ----------------------------------------------------------------------------------------------
# ODE samplers


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


# ----------------------------------------------------------------------------------------------
# stochastic samplers


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


# ----------------------------------------------------------------------------------------------
# few-step (student) samplers


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


# ----------------------------------------------------------------------------------------------
# the loop


class SampleResult(NamedTuple):
    """What `sample` returns.

    Attributes:
        x0: the result, ``[B, ...]``.
        nfe: the number of model evaluations made (``len(sampler.timesteps)``).
        trajectory: with ``return_trajectory=True``, ``nfe + 1`` states: ``trajectory[k]`` is the
            input of the ``k``-th model evaluation (the first is ``init_noise_sigma * z``; for
            `HeunSampler` every other one is a predictor's Euler point), ``trajectory[-1]`` is
            ``x0``. Otherwise ``None``.
    """

    x0: Tensor
    nfe: int
    trajectory: list[Tensor] | None


def sample(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    sampler: Sampler,
    z: Tensor,
    num_steps: int,
    *,
    kind: PredictionKind,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Run ``sampler`` from noise ``z`` with the model ``model_fn``.

    Gradients are neither enabled nor disabled here: wrap the call in ``torch.no_grad()`` to
    sample, or leave it out to backpropagate through the sampler.

    Args:
        model_fn: ``model_fn(x_t, t) -> prediction`` with ``x_t`` ``[B, ...]`` and ``t`` ``[B]`` in
            ``x_t``'s dtype; the prediction has ``x_t``'s shape and is of ``kind``.
        sampler: any `Sampler`; its `set_timesteps` is called here, on ``z``'s device.
        z: the noise, ``[B, ...]``, with the schedule's noise std (``schedule.sample_noise``);
            the initial state is ``sampler.init_noise_sigma * z``.
        num_steps: passed to `set_timesteps` (the NFE is ``len(sampler.timesteps)``).
        kind: what ``model_fn`` predicts: ``"x0"``, ``"eps"``, ``"v"`` or ``"velocity"``.
        generator: the source of the stochastic samplers' fresh noise.
        return_trajectory: keep every state (see `SampleResult`).

    Returns:
        ``SampleResult(x0, nfe, trajectory)``.
    """
    problems = []
    if not isinstance(sampler, Sampler):
        problems.append(f"The 'sampler' argument of sample must be a Sampler. Got {sampler!r}.")
    if not (isinstance(z, Tensor) and z.ndim >= 1):
        problems.append(f"The 'z' argument of sample must be a tensor [B, ...]. Got {_short(z)}.")
    problems += choice_problems(kind, PREDICTION_KINDS, name="kind", owner="sample")
    raise_problems(problems)
    sampler.set_timesteps(num_steps, device=z.device)
    x = sampler.init_noise_sigma * z
    trajectory = [x] if return_trajectory else None
    nfe = 0
    for t in sampler.timesteps:
        output = model_fn(x, t.to(x.dtype).expand(x.shape[0]))
        nfe += 1
        x = sampler.step(output, t, x, kind=kind, generator=generator)
        if trajectory is not None:
            trajectory.append(x)
    return SampleResult(x, nfe, trajectory)


# ----------------------------------------------------------------------------------------------
# helpers


def _c(coefficient: Tensor, like: Tensor) -> Tensor:
    """A 0-dim float64 CPU coefficient in ``like``'s dtype (a 0-dim CPU tensor combines with
    tensors on any device, so no host-to-device copy is made)."""
    return coefficient.to(like.dtype)


def grid_problems(
    schedule: NoiseSchedule, spacing: object, rho: object, t_start: object, owner: str, what: str = "parameter"
) -> list[str]:
    """Problems with the arguments of `time_grid` (shared by the samplers and the distillation
    targets that walk the same grid), one line each."""
    problems = choice_problems(spacing, SPACINGS, name="spacing", owner=owner, what=what)
    if not (is_finite_number(rho) and rho > 0):
        problems.append(f"The 'rho' {what} of {owner} must be a float > 0. Got {rho!r}.")
    if t_start is not None and not (is_finite_number(t_start) and schedule.t_min < t_start <= schedule.t_max):
        problems.append(
            f"The 't_start' {what} of {owner} must be None (the schedule's t_max) or a float in "
            f"({schedule.t_min}, {schedule.t_max}] for {type(schedule).__name__}. Got {t_start!r}."
        )
    return problems


def _short(value: object) -> str:
    if isinstance(value, Tensor):
        if value.numel() <= 4:
            return repr(value.tolist())
        low, high = float(value.min()), float(value.max())
        return f"a tensor of shape {tuple(value.shape)} in [{low:.6g}, {high:.6g}]"
    return repr(value)


def _is_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


