"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): `pd_times`,
`progressive_distillation_target`, `pd_weight`."""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.core.checks import choice_problems, raise_problems
from anydistill.diffusion.samplers.base import grid_problems
from anydistill.diffusion.schedules import NoiseSchedule, expand_t
from anydistill.diffusion.targets.checks import ModelFn, as_time, batch_t, is_count
from anydistill.diffusion.targets.ddim import ddim_step

PD_WEIGHTINGS: tuple[str, ...] = ("snr_trunc", "snr", "snr+1", "constant")


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
    if not is_count(num_student_steps):
        problems.append(
            "The 'num_student_steps' argument of pd_times must be an int >= 1. "
            f"Got {num_student_steps!r}."
        )
    raise_problems(problems)
    t = as_time(t)
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
    t = batch_t(as_time(t), x_t, "progressive_distillation_target")
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
