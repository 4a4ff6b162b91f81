"""Distribution matching (DMD, Yin et al. 2024; DMD2): `dmd_gradient` and `dmd_surrogate_loss`."""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.core.checks import choice_problems, raise_problems
from anydistill.diffusion.schedules import NoiseSchedule
from anydistill.diffusion.targets.checks import ModelFn, as_time, batch_t, same_shape_problems

REDUCTIONS: tuple[str, ...] = ("sum", "mean")


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
    raise_problems(same_shape_problems(name, x0_student=x0_student, noise=noise))
    t = batch_t(as_time(t), x0_student, name)
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
    problems = same_shape_problems("dmd_surrogate_loss", x0_student=x0_student, grad=grad)
    problems += choice_problems(reduction, REDUCTIONS, name="reduction", owner="dmd_surrogate_loss")
    raise_problems(problems)
    dtype = torch.promote_types(x0_student.dtype, torch.float32)
    x = x0_student.to(dtype)
    target = (x - grad.to(dtype)).detach()
    squared = (x - target).pow(2)
    return 0.5 * (squared.sum() if reduction == "sum" else squared.mean())


def decoupled_dmd_gradient(
    x0_student: Tensor,
    guidance: float,
    real_pair_x0_fn,
    fake_score_x0_fn: ModelFn,
    schedule: NoiseSchedule,
    *,
    dm: tuple[Tensor, Tensor] | None,
    ca: tuple[Tensor, Tensor] | None,
    normalise: str = "per-term",
) -> Tensor:
    r"""DMD's gradient with a guided real score, split into its two terms (Decoupled DMD, Liu et al.
    2025, Eq. 6 and 8), each taken at its own re-noising of the generator's samples ``x``:

    .. math::
        \text{grad} = \underbrace{\frac{\hat x_0^\text{fake}(x_{\tau_{DM}}) - \hat x_0^{c}(x_{\tau_{DM}})}{n(\tau_{DM})}}_{\text{DM}}
        \;-\;(\alpha - 1)\,\underbrace{\frac{\hat x_0^{c}(x_{\tau_{CA}}) - \hat x_0^{\varnothing}(x_{\tau_{CA}})}{n(\tau_{CA})}}_{\text{CA}},

    with :math:`\hat x_0^{c}, \hat x_0^{\varnothing}` the teacher's conditional and unconditional
    predictions and each term normalised as `dmd_gradient` does, by the per-example
    :math:`n(\tau) = \operatorname{mean}|x - \hat x_0^{\alpha}(x_\tau)|` of the guided prediction
    :math:`\hat x_0^\alpha = \hat x_0^\varnothing + \alpha(\hat x_0^c - \hat x_0^\varnothing)`. Since
    :math:`\hat x_0^\text{fake} - \hat x_0^\alpha = (\hat x_0^\text{fake} - \hat x_0^c) - (\alpha-1)(\hat x_0^c -
    \hat x_0^\varnothing)`, taking both terms at one ``(t, noise)`` is exactly `dmd_gradient` with the
    guided teacher (CFG-DMD). In scores (x0 differences times :math:`\alpha_t/\sigma_t^2`), DM is
    :math:`s^c_\text{real} - s^c_\text{fake}` and CA :math:`s^c_\text{real} - s^\varnothing_\text{real}`.

    Args:
        x0_student: the generator's samples ``[B, ...]`` (any grad is ignored here).
        guidance: the CFG weight :math:`\alpha` of the real score.
        real_pair_x0_fn: ``fn(x_t, t) -> (x0_cond, x0_uncond)`` of the teacher.
        fake_score_x0_fn: ``fn(x_t, t) -> x0`` of the fake score.
        schedule: the `NoiseSchedule`.
        dm, ca: ``(t [B], noise [B, ...])`` of each term, or None to leave the term out.
        normalise: ``per-term`` (each term by its own level's normaliser) or ``joint`` (both by the
            DM level's, the CA level's without DM: one weight for the whole gradient, so a CA term
            taken where it is small stays small). Both equal CFG-DMD when the terms share ``(t, noise)``.

    Returns:
        ``grad [B, ...]`` without gradient (float32, or float64 for float64 samples).
    """
    name = "decoupled_dmd_gradient"
    if dm is None and ca is None:
        raise ValueError(f"{name}: give dm, ca or both (a (t, noise) pair each).")
    dtype = torch.promote_types(x0_student.dtype, torch.float32)
    x = x0_student.detach()
    dims = tuple(range(1, x.ndim))
    if normalise not in ("per-term", "joint"):
        raise ValueError(f"{name}: normalise must be 'per-term' or 'joint'. Got {normalise!r}.")
    grad = torch.zeros_like(x, dtype=dtype)
    shared_normaliser = None
    with torch.no_grad():
        for term, pair in (("dm", dm), ("ca", ca)):
            if pair is None:
                continue
            t, noise = pair
            raise_problems(same_shape_problems(name, x0_student=x0_student, noise=noise))
            t = batch_t(as_time(t), x, name)
            x_t = schedule.add_noise(x, noise, t)
            cond, uncond = (p.to(dtype) for p in real_pair_x0_fn(x_t, t))
            distance = (x.to(dtype) - (uncond + guidance * (cond - uncond))).abs()
            normaliser = distance.mean(dim=dims, keepdim=True) if dims else distance
            if normalise == "joint":  # the first term's (DM's when present) for both
                shared_normaliser = normaliser if shared_normaliser is None else shared_normaliser
                normaliser = shared_normaliser
            if term == "dm":
                grad += torch.nan_to_num((fake_score_x0_fn(x_t, t).to(dtype) - cond) / normaliser)
            else:
                grad -= torch.nan_to_num((guidance - 1) * (cond - uncond) / normaliser)
    return grad
