"""`rectified_flow_loss`: the rectified-flow regression (Liu, Gong & Liu 2022; RF++ 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.core.checks import choice_problems, is_finite_number, raise_problems
from anydistill.diffusion.targets.checks import as_time, batch_t, same_shape_problems
from anydistill.diffusion.targets.consistency import ICT_HUBER_SCALE, pseudo_huber

RF_LOSSES: tuple[str, ...] = ("l2", "pseudo_huber")
RF_WEIGHTINGS: tuple[str, ...] = ("none", "rfpp")


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
    problems = same_shape_problems(name, model_velocity=model_velocity, x0=x0, noise=noise)
    problems += choice_problems(loss, RF_LOSSES, name="loss", owner=name)
    problems += choice_problems(weighting, RF_WEIGHTINGS, name="weighting", owner=name)
    if huber_c is not None and not (is_finite_number(huber_c) and huber_c > 0):
        problems.append(
            f"The 'huber_c' argument of {name} must be a float > 0 or None. Got {huber_c!r}."
        )
    if x0.ndim == 0:
        problems.append(f"{name} needs tensors [B, ...] with a batch dimension. Got 0-dim.")
    raise_problems(problems)
    t = batch_t(as_time(t), x0, name)
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
