"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023; iCT, Song & Dhariwal 2023):
the teacher ODE step, the skip parametrisation and the pseudo-Huber distance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anydistill.core.checks import choice_problems, is_finite_number, raise_problems
from anydistill.diffusion.schedules import PREDICTION_KINDS, NoiseSchedule, expand_t
from anydistill.diffusion.targets.checks import (
    ModelFn,
    as_time,
    batch_t,
    is_count,
    same_shape_problems,
)

CD_SOLVERS: tuple[str, ...] = ("euler", "heun")

# iCT (Song & Dhariwal 2023, Sec. 3.3): c = 0.00054 sqrt(d) (0.03 on CIFAR-10, d = 3072).
ICT_HUBER_SCALE = 0.00054


def consistency_distillation_pair(
    x_t_next: Tensor,
    t_next: Tensor,
    t_cur: Tensor,
    teacher_velocity_fn: ModelFn,
    schedule: NoiseSchedule,
    solver: str = "heun",
    *,
    kind: str = "velocity",
) -> Tensor:
    r"""One teacher step of the probability-flow ODE from ``t_{n+1}`` down to ``t_n``: the point
    :math:`\hat x_{t_n}` of consistency distillation (Song, Dhariwal, Chen & Sutskever 2023,
    "Consistency Models", Eq. 7 and Algorithm 2).

    With :math:`u(x, t)` the teacher's velocity :math:`dx/dt` and :math:`h = t_n - t_{n+1} < 0`:

    .. math::
        \text{euler:}\quad \hat x_{t_n} = x_{t_{n+1}} + h\,u(x_{t_{n+1}}, t_{n+1});

        \text{heun:}\quad \tilde x = x_{t_{n+1}} + h\,u(x_{t_{n+1}}, t_{n+1}),\quad
        \hat x_{t_n} = x_{t_{n+1}} + \tfrac h2\big(u(x_{t_{n+1}}, t_{n+1}) + u(\tilde x, t_n)\big).

    Heun (2 teacher calls) is the paper's solver with EDM teachers; for `EDM` the velocity is
    ``(x - D(x, t))/t`` and this is ``heun_solver`` of ``consistency_losses`` in
    openai/consistency_models ``cm/karras_diffusion.py``. Like that code (and unlike
    `HeunSampler`, which ends with an Euler step) the correction is always made, also to
    ``t_n = t_min``. The CD loss is then
    ``lambda(t_{n+1}) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_{theta^-}(x_hat_{t_n}, t_n))`` with
    ``x_{t_{n+1}} = schedule.add_noise(x0, noise, t_{n+1})``; the paper's times are the EDM grid
    of ``N`` points, ``time_grid(schedule, N - 1, spacing="karras")`` (N = 18 on CIFAR-10).

    Args:
        x_t_next: the noisier point :math:`x_{t_{n+1}}`, ``[B, ...]``.
        t_next: :math:`t_{n+1}`, the larger time, ``[B]`` (or 0-dim).
        t_cur: :math:`t_n < t_{n+1}`, ``[B]`` (or 0-dim).
        teacher_velocity_fn: ``fn(x [B, ...], t [B]) -> dx/dt [B, ...]`` of the teacher, e.g.
            ``lambda x, t: teacher.predict(x, t, cond, kind="velocity", cfg=w)``.
        schedule: the `NoiseSchedule`, which converts the teacher's output to a velocity when
            ``kind`` is not ``"velocity"``.
        solver: ``"heun"`` (default, the paper's) or ``"euler"``.
        kind: what ``teacher_velocity_fn`` returns: ``"velocity"`` (default), or ``"x0"``,
            ``"eps"``, ``"v"`` (converted with ``schedule.convert``; an EDM denoiser ``D`` with
            ``kind="x0"`` gives the official code's ``(x - D)/t``).

    Returns:
        :math:`\hat x_{t_n}`, ``[B, ...]`` in the dtype of ``x_t_next``, without gradient.
    """
    name = "consistency_distillation_pair"
    problems = choice_problems(solver, CD_SOLVERS, name="solver", owner=name)
    problems += choice_problems(kind, PREDICTION_KINDS, name="kind", owner=name)
    raise_problems(problems)
    t_next = batch_t(as_time(t_next), x_t_next, name)
    t_cur = batch_t(as_time(t_cur), x_t_next, name)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return schedule.convert(teacher_velocity_fn(x, t), x, t, kind, "velocity")

    with torch.no_grad():
        h = expand_t(t_cur - t_next, x_t_next)
        d = velocity(x_t_next, t_next)
        x_euler = x_t_next + h * d
        if solver == "euler":
            return x_euler
        d_cur = velocity(x_euler, t_cur)
        return x_t_next + h * (d + d_cur) / 2


def consistency_coefficients(
    t: Tensor,
    schedule: NoiseSchedule,
    sigma_data: float = 0.5,
    t_min: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""``(c_skip, c_out)`` of the consistency-model parametrisation
    ``f = c_skip * x_t + c_out * F`` on any schedule, with ``c_skip(t_min) = 1 / alpha(t_min)``
    and ``c_out(t_min) = 0``.

    Song et al. (2023, Appendix C), in EDM units (``x = x0 + sigma n``, :math:`\epsilon` the
    smallest noise level):

    .. math::
        c_\text{skip}(\sigma) = \frac{\sigma_d^2}{(\sigma - \epsilon)^2 + \sigma_d^2},\qquad
        c_\text{out}(\sigma) = \frac{\sigma_d\,(\sigma - \epsilon)}{\sqrt{\sigma_d^2 + \sigma^2}}

    (``get_scalings_for_boundary_condition`` in openai/consistency_models
    ``cm/karras_diffusion.py``). A general schedule's ``x_t`` is the EDM input scaled by
    ``alpha``: ``x_t / alpha = x0 + sigma_e n`` with ``sigma_e = edm_sigma(t) = k sigma / alpha``
    (``k`` the noise std). Folding the ``1/alpha`` into ``c_skip`` and writing
    ``epsilon = edm_sigma(t_min)`` gives, with ``a = alpha(t)`` and ``r = k sigma(t) - epsilon a``,

    .. math::
        c_\text{skip} = \frac{\sigma_d^2\,a}{r^2 + \sigma_d^2 a^2},\qquad
        c_\text{out} = \frac{\sigma_d\,r}{\sqrt{(k\sigma)^2 + \sigma_d^2 a^2}},

    finite everywhere, including ``alpha(t) = 0`` (``t_max`` of `RectifiedFlow`, `VPCosine`,
    `TrigFlow`: ``c_skip = 0``, ``c_out = sigma_d``). For `EDM` (``a = 1``, ``k sigma = t``) it is
    the paper's formula as written.

    Args:
        t: times ``[B]``.
        schedule: the `NoiseSchedule`.
        sigma_data: the data's std :math:`\sigma_d` (0.5 in the paper); > 0.
        t_min: the boundary time (the paper's :math:`\epsilon` is its EDM noise level); default
            ``schedule.t_min``.

    Returns:
        ``(c_skip, c_out)``, each ``[B]`` in the dtype of ``t``.
    """
    problems = []
    if not (is_finite_number(sigma_data) and sigma_data > 0):
        problems.append(
            "The 'sigma_data' argument of consistency_coefficients must be a float > 0. "
            f"Got {sigma_data!r}."
        )
    if t_min is not None and not is_finite_number(t_min):
        problems.append(
            "The 't_min' argument of consistency_coefficients must be a float or None (the "
            f"schedule's t_min). Got {t_min!r}."
        )
    raise_problems(problems)
    boundary = torch.tensor(schedule.t_min if t_min is None else t_min, dtype=torch.float64)
    epsilon = float(schedule.edm_sigma(boundary))  # a host float: no device sync
    a = schedule.alpha(t)
    k_sigma = schedule.noise_std * schedule.sigma(t)
    r = k_sigma - epsilon * a
    c_skip = sigma_data**2 * a / (r**2 + sigma_data**2 * a**2)
    c_out = sigma_data * r / torch.sqrt(k_sigma**2 + sigma_data**2 * a**2)
    return c_skip, c_out


def consistency_parametrisation(
    x_t: Tensor,
    t: Tensor,
    network_out: Tensor,
    schedule: NoiseSchedule,
    sigma_data: float = 0.5,
    t_min: float | None = None,
) -> Tensor:
    r"""The consistency function :math:`f_\theta(x_t, t) = c_\text{skip}(t)\,x_t +
    c_\text{out}(t)\,F_\theta` (Song et al. 2023, Eq. 5 and Appendix C), with the boundary
    condition :math:`f_\theta(x, t_\min) = x / \alpha(t_\min)`, which is ``x`` on the four
    schedules here (``alpha(t_min) = 1``). Coefficients: `consistency_coefficients`.

    The network ``F`` is evaluated by the caller; the official code feeds it
    ``c_in x_t = x_t / sqrt(sigma^2 + sigma_d^2)`` and ``1000 * ln(sigma) / 4`` (EDM's ``c_in``
    and ``c_noise``, `EDM.c_in`, `EDM.c_noise`).

    Args:
        x_t: inputs ``[B, ...]``.
        t: times ``[B]`` (or 0-dim).
        network_out: ``F``, ``[B, ...]``.
        schedule, sigma_data, t_min: as in `consistency_coefficients`.

    Returns:
        ``f``, ``[B, ...]`` in the dtype of ``x_t``; differentiable in ``network_out``.
    """
    name = "consistency_parametrisation"
    raise_problems(same_shape_problems(name, x_t=x_t, network_out=network_out))
    t = batch_t(as_time(t), x_t, name)
    c_skip, c_out = consistency_coefficients(t, schedule, sigma_data, t_min)
    return expand_t(c_skip, x_t) * x_t + expand_t(c_out, x_t) * network_out


def ict_huber_c(num_elements: int) -> float:
    r"""The pseudo-Huber constant of improved consistency training (Song & Dhariwal 2023,
    "Improved Techniques for Training Consistency Models", Sec. 3.3): ``c = 0.00054 sqrt(d)``
    for ``d`` elements per example (0.03 on CIFAR-10)."""
    if not is_count(num_elements):
        raise_problems(
            [
                "The 'num_elements' argument of ict_huber_c must be an int >= 1. "
                f"Got {num_elements!r}."
            ]
        )
    return ICT_HUBER_SCALE * math.sqrt(num_elements)


def pseudo_huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    r"""Per-example pseudo-Huber distance (Charbonnier 1997; iCT, Song & Dhariwal 2023, Eq. 6):

    .. math::  d(a, b) = \sqrt{\|a - b\|_2^2 + c^2} - c
                       = \frac{\|a - b\|^2}{\sqrt{\|a - b\|^2 + c^2} + c},

    the second form being the one computed (no cancellation for ``||a - b|| << c``). It is
    ``~ ||a - b||^2 / (2c)`` for ``||a - b|| << c`` and ``~ ||a - b|| - c`` for ``||a - b|| >> c``:
    quadratic near zero, robust (linear) for large errors.

    Args:
        a, b: ``[B, ...]``, same shape.
        c: > 0; default `ict_huber_c` of the per-example size (iCT). RF++ uses another scale,
            see `rectified_flow_loss`.

    Returns:
        ``[B]`` in float32 (float64 for float64 inputs), differentiable.
    """
    problems = same_shape_problems("pseudo_huber", a=a, b=b)
    if c is not None and not (is_finite_number(c) and c > 0):
        problems.append(f"The 'c' argument of pseudo_huber must be a float > 0 or None. Got {c!r}.")
    if a.ndim == 0:
        problems.append("pseudo_huber needs tensors [B, ...] with a batch dimension. Got 0-dim.")
    raise_problems(problems)
    if c is None:
        c = ict_huber_c(max(a[0].numel(), 1) if a.shape[0] else 1)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    sq = (a.to(dtype) - b.to(dtype)).pow(2).reshape(a.shape[0], -1).sum(dim=1)
    return sq / (torch.sqrt(sq + c**2) + c)
