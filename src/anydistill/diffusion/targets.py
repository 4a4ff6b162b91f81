r"""Regression targets and losses of diffusion step distillation, as pure tensor functions.

Each function here is one building block of a method in the step-distillation family: the
progressive-distillation target, the consistency-distillation teacher step and skip
parametrisation, the distribution-matching (DMD) gradient and its surrogate loss, and the
rectified-flow regression. None of them trains, holds state or knows a `LightningModule`: models
come in as plain callables.

Notation (as in `anydistill.diffusion.schedules`): ``x_t = alpha(t) x0 + sigma(t) eps`` on the
schedule's ``[t_min, t_max]`` (data near ``t_min``); shapes are ``[B, ...]`` for data and ``[B]``
(or 0-dim, shared by the batch) for times. Model callables are called as ``fn(x [B, ...], t [B])``
with ``t`` in the dtype it was given (pass float64 times where precision matters); wrap a
`DiffusionTeacher` as ``lambda x, t: teacher.predict(x, t, cond, kind="x0", cfg=w)``.

=====================================  ====================================================
`ddim_step`                            deterministic DDIM update from an ``x0`` prediction
`pd_times`, `progressive_distillation_target`, `pd_weight`
                                       Salimans & Ho (2022), Algorithm 2
`consistency_distillation_pair`        one teacher ODE step ``t_{n+1} -> t_n`` (Song+ 2023)
`consistency_coefficients`, `consistency_parametrisation`
                                       ``f = c_skip x + c_out F`` with ``f(x, t_min) = x``
`pseudo_huber`, `ict_huber_c`          ``sqrt(||a - b||^2 + c^2) - c`` (iCT, RF++)
`dmd_gradient`, `dmd_surrogate_loss`   Yin+ (2024) DMD / DMD2 distribution-matching gradient
`rectified_flow_loss`                  ``||v - (noise - x0)||`` (Liu+ 2022; RF++ 2024)
=====================================  ====================================================

Functions that call a teacher (or a fake score) build **targets**: they run under
``torch.no_grad()`` and their results carry no gradient, as in the official code, which detaches
every such target. Losses are computed in at least float32 (DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from anydistill.core.checks import choice_problems, is_finite_number, raise_problems
from anydistill.diffusion.samplers import grid_problems
from anydistill.diffusion.schedules import PREDICTION_KINDS, NoiseSchedule, expand_t

ModelFn = Callable[[Tensor, Tensor], Tensor]

PD_WEIGHTINGS: tuple[str, ...] = ("snr_trunc", "snr", "snr+1", "constant")
CD_SOLVERS: tuple[str, ...] = ("euler", "heun")
RF_LOSSES: tuple[str, ...] = ("l2", "pseudo_huber")
RF_WEIGHTINGS: tuple[str, ...] = ("none", "rfpp")
REDUCTIONS: tuple[str, ...] = ("sum", "mean")

# iCT (Song & Dhariwal 2023, Sec. 3.3): c = 0.00054 sqrt(d) (0.03 on CIFAR-10, d = 3072).
ICT_HUBER_SCALE = 0.00054


# ----------------------------------------------------------------------------------------------
# DDIM


def ddim_step(
    x_t: Tensor, x0_hat: Tensor, t: Tensor | float, s: Tensor | float, schedule: NoiseSchedule
) -> Tensor:
    r"""The deterministic DDIM update (Song, Meng & Ermon 2021, Eq. 12 with :math:`\sigma = 0`)
    from ``t`` to ``s`` given an ``x0`` prediction, on any Gaussian path:

    .. math::
        \hat\epsilon = \frac{x_t - \alpha_t \hat x_0}{\sigma_t},\qquad
        x_s = \alpha_s \hat x_0 + \sigma_s \hat\epsilon
            = \frac{\sigma_s}{\sigma_t} x_t
              + \Big(\alpha_s - \frac{\sigma_s}{\sigma_t}\alpha_t\Big)\hat x_0 .

    The implied noise is kept and ``(x0_hat, eps_hat)`` are moved to time ``s``; with the exact
    ``x0`` of a point-mass data distribution the result lies exactly on the path. Official
    counterpart: ``ddim_step`` / the teacher steps of ``Model.training_losses`` in
    google-research ``diffusion_distillation/diffusion_distillation/dpm.py`` (there in log-SNR).
    Equals `DDIMSampler` with ``eta = 0`` (one of its steps).

    Args:
        x_t: the current state ``[B, ...]``.
        x0_hat: the ``x0`` prediction at ``(x_t, t)``, ``[B, ...]``.
        t: the current time, ``[B]`` or 0-dim (or a float); ``sigma(t) > 0`` (not ``t_min`` of a
            schedule with ``sigma(t_min) = 0``, where the implied noise is undefined).
        s: the target time, ``[B]`` or 0-dim (or a float); any ``s`` (``s < t`` to denoise).
        schedule: the `NoiseSchedule`.

    Returns:
        ``x_s``, ``[B, ...]`` in the dtype of ``x_t``. Differentiable in ``x_t`` and ``x0_hat``.
    """
    raise_problems(_same_shape_problems("ddim_step", x_t=x_t, x0_hat=x0_hat))
    t, s = _as_time(t), _as_time(s)
    ratio = schedule.sigma(s) / schedule.sigma(t)  # in the dtype of the times
    coef_x0 = schedule.alpha(s) - ratio * schedule.alpha(t)
    return expand_t(ratio, x_t) * x_t + expand_t(coef_x0, x_t) * x0_hat


# ----------------------------------------------------------------------------------------------
# progressive distillation


def pd_times(
    t: Tensor,
    schedule: NoiseSchedule,
    num_student_steps: int,
    *,
    spacing: str = "uniform",
    rho: float = 7.0,
    t_start: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The two teacher times ``(t', t'')`` of progressive distillation for a student time ``t``.

    The paper (Salimans & Ho 2022, Algorithm 2) works in its own time ``u`` in ``[0, 1]``: the
    student takes ``N`` steps on ``u = i/N``, and from ``u`` the teacher takes two DDIM steps to
    ``u' = u - 1/(2N)`` and ``u'' = u - 1/N``. Here ``u`` is mapped to the schedule's time by the
    grid of the samplers (`anydistill.diffusion.samplers.time_grid`): from ``t_start`` (default
    ``t_max``) at ``u = 1`` down to ``t_min`` at ``u = 0``,

    * ``spacing="uniform"``: ``t = t_min + u (t_start - t_min)``, so
      ``t' = t - (t_start - t_min)/(2N)`` and ``t'' = t - (t_start - t_min)/N``
      (for `VPCosine` and `RectifiedFlow`, on ``[0, 1]``, ``t = u``: the paper's units);
    * ``spacing="karras"``: uniform in ``t^(1/rho)`` (EDM's grid), so
      ``t' = (t^(1/rho) - D/2)^rho`` and ``t'' = (t^(1/rho) - D)^rho`` with
      ``D = (t_start^(1/rho) - t_min^(1/rho))/N`` (the ``progdist_losses`` of
      openai/consistency_models ``cm/karras_diffusion.py`` on the EDM grid).

    So the student's times are ``time_grid(schedule, N, spacing=...)[:-1]`` (the times of a
    ``DDIMSampler`` with ``N`` steps; draw them with ``DiscreteTime``) and ``(t', t'')`` are the
    teacher's grid of ``2N`` steps. Other ``t`` are allowed (the continuous variant);
    ``t'`` and ``t''`` are clamped at ``t_min``.

    Args:
        t: student times ``[B]`` (or 0-dim).
        schedule: the `NoiseSchedule`.
        num_student_steps: ``N >= 1``, the student's number of sampling steps.
        spacing, rho, t_start: the grid, as in `time_grid`.

    Returns:
        ``(t_mid, t_next)``, each shaped and typed like ``t``.
    """
    problems = grid_problems(schedule, spacing, rho, t_start, "pd_times", what="argument")
    if not _is_count(num_student_steps):
        problems.append(
            "The 'num_student_steps' argument of pd_times must be an int >= 1. "
            f"Got {num_student_steps!r}."
        )
    raise_problems(problems)
    t = _as_time(t)
    hi = float(schedule.t_max if t_start is None else t_start)
    lo = float(schedule.t_min)
    if spacing == "uniform":
        step = (hi - lo) / num_student_steps
        return (t - step / 2).clamp(min=lo), (t - step).clamp(min=lo)
    # karras: the grid is uniform in t^(1/rho); one student step there is `step`
    lo_r = lo ** (1 / rho)
    step = (hi ** (1 / rho) - lo_r) / num_student_steps
    t_r = t.clamp(min=lo) ** (1 / rho)
    t_mid = (t_r - step / 2).clamp(min=lo_r) ** rho
    t_next = (t_r - step).clamp(min=lo_r) ** rho
    # the power may round below t_min at the data end
    return t_mid.clamp(min=lo), t_next.clamp(min=lo)


def progressive_distillation_target(
    x_t: Tensor,
    t: Tensor,
    teacher_x0_fn: ModelFn,
    schedule: NoiseSchedule,
    num_student_steps: int,
    *,
    spacing: str = "uniform",
    rho: float = 7.0,
    t_start: float | None = None,
) -> Tensor:
    r"""The ``x0`` target of progressive distillation (Salimans & Ho 2022, "Progressive
    Distillation for Fast Sampling of Diffusion Models", Algorithm 2).

    Two deterministic DDIM steps of the teacher, ``t -> t' -> t''`` (`pd_times`), then the ``x0``
    that makes **one** student DDIM step ``t -> t''`` land on the teacher's :math:`x_{t''}`:

    .. math::
        x_{t'} = \text{DDIM}(x_t, \hat x_\eta(x_t), t, t'),\qquad
        x_{t''} = \text{DDIM}(x_{t'}, \hat x_\eta(x_{t'}), t', t''),

        \tilde x = \frac{x_{t''} - (\sigma_{t''}/\sigma_t)\,x_t}
                        {\alpha_{t''} - (\sigma_{t''}/\sigma_t)\,\alpha_t}.

    (Solve `ddim_step` ``x_{t''} = (sigma_{t''}/sigma_t) x_t + (alpha_{t''} - (sigma_{t''}/sigma_t)
    alpha_t) x~`` for ``x~``.) The denominator is nonzero for ``t'' < t`` (the SNR is monotone);
    at ``t'' = t_min`` with ``sigma(t_min) = 0`` it is ``alpha(t_min)`` and ``x~`` is the teacher's
    second ``x0`` prediction, as the official code's special case for ``i = 0``. The student is
    trained with :math:`w(\lambda_t)\,\|\hat x_\theta(x_t) - \tilde x\|^2`, see `pd_weight`.

    Official counterpart: ``Model.training_losses`` (the ``target_model_fn`` branch, ``x_target``)
    in google-research ``diffusion_distillation/diffusion_distillation/dpm.py``.

    Args:
        x_t: noisy inputs ``[B, ...]`` (``schedule.add_noise(x0, noise, t)`` of real data).
        t: student times ``[B]``, on the student's grid (`pd_times`).
        teacher_x0_fn: ``fn(x [B, ...], t [B]) -> x0 prediction [B, ...]`` of the teacher.
        schedule: the `NoiseSchedule`.
        num_student_steps: ``N``, the student's number of steps (the teacher takes ``2N``).
        spacing, rho, t_start: the grid (`pd_times`).

    Returns:
        ``x~``, ``[B, ...]`` in the dtype of ``x_t``, without gradient.
    """
    t = _batch_t(_as_time(t), x_t, "progressive_distillation_target")
    t_mid, t_next = pd_times(
        t, schedule, num_student_steps, spacing=spacing, rho=rho, t_start=t_start
    )
    with torch.no_grad():
        x_mid = ddim_step(x_t, teacher_x0_fn(x_t, t), t, t_mid, schedule)
        x_next = ddim_step(x_mid, teacher_x0_fn(x_mid, t_mid), t_mid, t_next, schedule)
        ratio = schedule.sigma(t_next) / schedule.sigma(t)
        denominator = schedule.alpha(t_next) - ratio * schedule.alpha(t)
        return (x_next - expand_t(ratio, x_t) * x_t) / expand_t(denominator, x_t)


def pd_weight(t: Tensor, schedule: NoiseSchedule, weighting: str = "snr_trunc") -> Tensor:
    r"""Per-example weight :math:`w(\lambda_t)` of the ``x0``-space loss
    :math:`w\,\|\hat x_\theta - \tilde x\|^2` of progressive distillation.

    Salimans & Ho (2022, Sec. 4) train on the **truncated SNR** weighting

    .. math::  w = \max(\mathrm{SNR}(t), 1),\qquad \mathrm{SNR} = \alpha_t^2/\sigma_t^2,

    which equals ``max(x_mse, eps_mse)`` of the official code (``mean_loss_weight_type=
    'snr_trunc'`` in ``dpm.py``): at a fixed ``x_t`` an ``x0`` error ``dx`` is an ``eps`` error
    ``-(alpha/sigma) dx``, so ``eps_mse = SNR * x_mse``. It stays finite as ``SNR -> 0`` (pure
    noise), where the plain ``eps`` loss would give the student no signal.

    Args:
        t: times ``[B]``.
        schedule: the `NoiseSchedule` (the SNR is in its own units).
        weighting: ``"snr_trunc"`` (default, the paper's), ``"snr"`` (``eps``-MSE),
            ``"snr+1"`` (``v``-MSE on variance-preserving paths) or ``"constant"`` (``x``-MSE).

    Returns:
        ``[B]`` in the dtype of ``t``.
    """
    raise_problems(choice_problems(weighting, PD_WEIGHTINGS, name="weighting", owner="pd_weight"))
    if weighting == "constant":
        return torch.ones_like(t)
    snr = schedule.snr(t)
    if weighting == "snr":
        return snr
    if weighting == "snr+1":
        return snr + 1
    return snr.clamp(min=1)


# ----------------------------------------------------------------------------------------------
# consistency distillation


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
    t_next = _batch_t(_as_time(t_next), x_t_next, name)
    t_cur = _batch_t(_as_time(t_cur), x_t_next, name)

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
    raise_problems(_same_shape_problems(name, x_t=x_t, network_out=network_out))
    t = _batch_t(_as_time(t), x_t, name)
    c_skip, c_out = consistency_coefficients(t, schedule, sigma_data, t_min)
    return expand_t(c_skip, x_t) * x_t + expand_t(c_out, x_t) * network_out


def ict_huber_c(num_elements: int) -> float:
    r"""The pseudo-Huber constant of improved consistency training (Song & Dhariwal 2023,
    "Improved Techniques for Training Consistency Models", Sec. 3.3): ``c = 0.00054 sqrt(d)``
    for ``d`` elements per example (0.03 on CIFAR-10)."""
    if not _is_count(num_elements):
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
    problems = _same_shape_problems("pseudo_huber", a=a, b=b)
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


# ----------------------------------------------------------------------------------------------
# distribution matching (DMD, DMD2)


def dmd_gradient(
    x0_student: Tensor,
    t: Tensor,
    noise: Tensor,
    real_score_x0_fn: ModelFn,
    fake_score_x0_fn: ModelFn,
    schedule: NoiseSchedule,
) -> Tensor:
    r"""The distribution-matching gradient of DMD (Yin et al. 2024, "One-step Diffusion with
    Distribution Matching Distillation", Eq. 7-8), on the generator's samples.

    The student's sample is noised, :math:`x_t = \alpha_t x + \sigma_t \epsilon`, and both score
    nets predict ``x0`` there. With scores :math:`s = -(x_t - \alpha_t \hat x_0)/\sigma_t^2`
    (per unit noise variance), :math:`s_\text{fake} - s_\text{real} =
    (\alpha_t/\sigma_t^2)(\hat x_0^\text{fake} - \hat x_0^\text{real})`, and DMD's weight
    :math:`w_t = \frac{\sigma_t^2}{\alpha_t}\frac{CS}{\|\hat x_0^\text{real} - x\|_1}` turns the
    KL gradient :math:`w_t (s_\text{fake} - s_\text{real})` into

    .. math::
        \text{grad} = \frac{\hat x_0^\text{fake}(x_t) - \hat x_0^\text{real}(x_t)}
                           {\operatorname{mean}|x - \hat x_0^\text{real}(x_t)|},

    the mean taken per example over all its elements. Gradient **descent** along ``grad`` moves
    ``x`` towards the real score's denoising and away from the fake's. Sign and normalisation
    checked against ``compute_distribution_matching_loss`` in tianweiy/DMD2
    ``main/edm/edm_guidance.py`` (``grad = (p_real - p_fake) / mean|p_real|`` with
    ``p = x - x0_hat``, which is the expression above), including its ``nan_to_num`` (a zero
    normalisation gives 0, not NaN). Apply it with `dmd_surrogate_loss`. DMD draws ``t`` from
    ``[0.02, 0.98]`` of the range (``UniformTime``); DMD2 from its ``min_step``/``max_step``.

    Args:
        x0_student: the generator's samples ``[B, ...]`` (any grad is ignored here).
        t: times ``[B]`` (or 0-dim).
        noise: ``[B, ...]``, std ``schedule.noise_std``.
        real_score_x0_fn: ``fn(x_t, t) -> x0`` of the teacher ("real score"; with CFG if wanted).
        fake_score_x0_fn: ``fn(x_t, t) -> x0`` of the fake-score net trained on student samples.
        schedule: the `NoiseSchedule`.

    Returns:
        ``grad``, ``[B, ...]`` in float32 (float64 for float64 samples), without gradient.
    """
    name = "dmd_gradient"
    raise_problems(_same_shape_problems(name, x0_student=x0_student, noise=noise))
    t = _batch_t(_as_time(t), x0_student, name)
    dtype = torch.promote_types(x0_student.dtype, torch.float32)
    with torch.no_grad():
        x = x0_student.detach()
        x_t = schedule.add_noise(x, noise, t)
        x0_real = real_score_x0_fn(x_t, t).to(dtype)
        x0_fake = fake_score_x0_fn(x_t, t).to(dtype)
        x = x.to(dtype)
        dims = tuple(range(1, x.ndim))
        distance = (x - x0_real).abs()
        normaliser = distance.mean(dim=dims, keepdim=True) if dims else distance
        return torch.nan_to_num((x0_fake - x0_real) / normaliser)


def dmd_surrogate_loss(x0_student: Tensor, grad: Tensor, reduction: str = "sum") -> Tensor:
    r"""The scalar whose gradient w.r.t. ``x0_student`` is ``grad`` (DMD2, Yin et al. 2024b;
    SDS-style, after stable-dreamfusion):

    .. math::  \mathcal L = \tfrac12\,\big\|x - \operatorname{sg}(x - \text{grad})\big\|^2,\qquad
               \nabla_x \mathcal L = x - (x - \text{grad}) = \text{grad}.

    Backpropagating it through the generator applies :math:`\text{grad}\cdot\partial x/\partial
    \theta`. ``reduction="mean"`` divides by the number of elements, as the official
    ``0.5 * F.mse_loss(x, (x - grad).detach(), reduction="mean")`` (tianweiy/DMD2
    ``main/edm/edm_guidance.py``), whose gradient is therefore ``grad / numel``.

    Args:
        x0_student: the generator's samples ``[B, ...]``, with gradient.
        grad: ``[B, ...]``, from `dmd_gradient` (detached here).
        reduction: ``"sum"`` (default: the gradient is exactly ``grad``) or ``"mean"``.

    Returns:
        A scalar in float32 (float64 for float64 samples).
    """
    problems = _same_shape_problems("dmd_surrogate_loss", x0_student=x0_student, grad=grad)
    problems += choice_problems(reduction, REDUCTIONS, name="reduction", owner="dmd_surrogate_loss")
    raise_problems(problems)
    dtype = torch.promote_types(x0_student.dtype, torch.float32)
    x = x0_student.to(dtype)
    target = (x - grad.to(dtype)).detach()
    squared = (x - target).pow(2)
    return 0.5 * (squared.sum() if reduction == "sum" else squared.mean())


# ----------------------------------------------------------------------------------------------
# rectified flow


def rectified_flow_loss(
    model_velocity: Tensor,
    x0: Tensor,
    noise: Tensor,
    t: Tensor,
    loss: str = "l2",
    *,
    huber_c: float | None = None,
    weighting: str = "none",
) -> Tensor:
    r"""The rectified-flow regression (Liu, Gong & Liu 2022, "Flow Straight and Fast", Eq. 1), for
    1-RF on (data, noise) and for reflow on teacher pairs ``(x0, noise) = (ODE(z), z)``.

    In the convention of `RectifiedFlow` (data at ``t = 0``, noise at ``t = 1``):

    .. math::
        x_t = (1 - t)\,x_0 + t\,\epsilon,\qquad \text{target} = \frac{dx_t}{dt} = \epsilon - x_0,

    and the model's velocity :math:`v_\theta(x_t, t)` is regressed onto it. (Liu et al.'s code,
    gnobitab/RectifiedFlow, runs time the other way, ``x_t = t x_1 + (1 - t) z`` with target
    ``x_1 - z``: replace ``t`` by ``1 - t`` and negate the velocity.) The caller evaluates the
    model at ``x_t = RectifiedFlow().add_noise(x0, noise, t)``.

    Losses, per example, then averaged over the batch:

    * ``"l2"``: mean over elements of :math:`(v - \text{target})^2` (RF's loss; RF++
      ``l2-squared``).
    * ``"pseudo_huber"``: :math:`(\sqrt{\|v - \text{target}\|^2 + c^2} - c)/d` with
      ``c = 0.00054 d`` by default, ``d`` the number of elements: RF++ (Lee, Lin & Fanti 2024,
      "Improving the Training of Rectified Flows"), as in sangyun884/rfpp ``train.py``
      (``loss_type='huber'``). Note the scale: RF++'s code and paper use ``0.00054 d``, iCT uses
      ``0.00054 sqrt(d)`` (`ict_huber_c`); pass ``huber_c`` to choose.

    Weightings (RF++ puts ``(1 - t)`` on the Huber term when combining it with LPIPS/``t``):
    ``"none"`` (1) or ``"rfpp"`` (``1 - t``).

    Args:
        model_velocity: :math:`v_\theta(x_t, t)`, ``[B, ...]``.
        x0: data (or the teacher's ODE output, for reflow) ``[B, ...]``.
        noise: :math:`\epsilon` (the coupled noise, for reflow) ``[B, ...]``.
        t: times ``[B]`` in ``[0, 1]``.
        loss: ``"l2"`` or ``"pseudo_huber"``.
        huber_c: the pseudo-Huber ``c`` (> 0); default ``0.00054 d``.
        weighting: ``"none"`` or ``"rfpp"``.

    Returns:
        A scalar in float32 (float64 for float64 inputs), differentiable in ``model_velocity``.
    """
    name = "rectified_flow_loss"
    problems = _same_shape_problems(name, model_velocity=model_velocity, x0=x0, noise=noise)
    problems += choice_problems(loss, RF_LOSSES, name="loss", owner=name)
    problems += choice_problems(weighting, RF_WEIGHTINGS, name="weighting", owner=name)
    if huber_c is not None and not (is_finite_number(huber_c) and huber_c > 0):
        problems.append(
            f"The 'huber_c' argument of {name} must be a float > 0 or None. Got {huber_c!r}."
        )
    if x0.ndim == 0:
        problems.append(f"{name} needs tensors [B, ...] with a batch dimension. Got 0-dim.")
    raise_problems(problems)
    t = _batch_t(_as_time(t), x0, name)
    dtype = torch.promote_types(torch.promote_types(model_velocity.dtype, x0.dtype), torch.float32)
    target = noise.to(dtype) - x0.to(dtype)
    d = max(x0[0].numel(), 1) if x0.shape[0] else 1
    if loss == "l2":
        squared = (model_velocity.to(dtype) - target).pow(2)
        per_example = squared.reshape(x0.shape[0], -1).mean(dim=1)
    else:
        c = ICT_HUBER_SCALE * d if huber_c is None else huber_c
        per_example = pseudo_huber(model_velocity.to(dtype), target, c) / d
    if weighting == "rfpp":
        per_example = (1 - t.to(dtype)) * per_example
    return per_example.mean()


# ----------------------------------------------------------------------------------------------
# helpers


def _as_time(t: Tensor | float) -> Tensor:
    if isinstance(t, Tensor):
        return t
    if is_finite_number(t):
        return torch.tensor(float(t), dtype=torch.float64)
    raise ValueError(f"Times must be tensors [B] (or 0-dim) or floats. Got {type(t).__name__}.")


def _batch_t(t: Tensor, x: Tensor, owner: str) -> Tensor:
    """``t`` as ``[B]``: a 0-dim time is shared by the batch; a wrong shape is refused."""
    if t.ndim == 0:
        return t.expand(x.shape[0]) if x.ndim else t
    if t.ndim != 1 or x.ndim == 0 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"{owner} needs times of shape [B], one per example of the data [B, ...], or 0-dim. "
            f"Got t of shape {tuple(t.shape)} for data of shape {tuple(x.shape)}."
        )
    return t


def _same_shape_problems(owner: str, **tensors: Tensor) -> list[str]:
    problems = [
        f"The '{name}' argument of {owner} must be a tensor. Got {type(value).__name__}."
        for name, value in tensors.items()
        if not isinstance(value, Tensor)
    ]
    if problems:
        return problems
    shapes = {name: tuple(value.shape) for name, value in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        return [f"{owner} needs {', '.join(shapes)} of the same shape. Got {listed}."]
    return []


def _is_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


