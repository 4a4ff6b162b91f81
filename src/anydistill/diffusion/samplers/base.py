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

from abc import ABC, abstractmethod
from collections.abc import Callable
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


