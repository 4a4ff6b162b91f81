"""Divergences between a student's and a teacher's categorical distributions.

Every function here is a pure function of tensors, shared by all families (classifiers, language
models, ...). Conventions:

* Logits have shape ``[..., C]``: ``[B, C]`` for a classifier, ``[B, L, V]`` or ``[N, V]`` for a
  language model. The last dim is the class (vocabulary) dim; every leading position is a *row*
  holding one distribution.
* The arithmetic is done in at least fp32: bf16/fp16 inputs are upcast with ``.float()`` (fp64
  inputs stay fp64), so the result is fp32 for low-precision inputs.
* ``teacher_logits`` is a target: it is detached, so no gradient reaches the teacher even if its
  forward pass forgot ``torch.no_grad()``.
* ``reduction``: ``"none"`` returns the per-row divergence, shape ``[...]`` (summed over ``C``);
  ``"batchmean"`` returns the sum over everything divided by the number of rows (the product of the
  leading dims: ``B`` for a classifier, the number of tokens for a language model); ``"sum"``
  returns the total.
* Logits must be finite (mask a vocabulary by selecting rows or columns, not with ``-inf``).
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.core.checks import is_finite_number, raise_problems

Reduction = Literal["none", "batchmean", "sum"]
_REDUCTIONS = ("none", "batchmean", "sum")


def kd_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = True,
    reduction: Reduction = "batchmean",
) -> Tensor:
    r"""Forward KL of Hinton et al. (2015), "Distilling the Knowledge in a Neural Network".

    .. math::

        \mathcal{L}_{KD} = T^2 \, \mathrm{KL}(p_t \,\|\, p_s)
            = T^2 \sum_c p_t^{(c)} \left(\log p_t^{(c)} - \log p_s^{(c)}\right),
        \qquad p = \mathrm{softmax}(z / T)

    The :math:`T^2` factor keeps the gradient's magnitude independent of :math:`T` (the paper's
    Sec. 2); set ``scale_by_t2=False`` for the bare KL.

    Args:
        student_logits: ``[..., C]``, gradients flow into it.
        teacher_logits: ``[..., C]``, same shape; detached.
        temperature: :math:`T > 0`, softens both distributions.
        scale_by_t2: multiply by :math:`T^2`.
        reduction: ``"none"`` (``[...]``), ``"batchmean"`` or ``"sum"`` (scalars).

    Returns:
        The divergence, fp32 (fp64 for fp64 inputs).
    """
    _validate("kd_kl", student_logits, teacher_logits, reduction, temperature=temperature)
    log_p_s = _log_probs(student_logits, temperature)
    log_p_t = _log_probs(teacher_logits.detach(), temperature)
    # F.kl_div(input, target) is KL(target || input).
    per_row = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    if scale_by_t2:
        per_row = per_row * temperature**2
    return _reduce(per_row, reduction)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    reduction: Reduction = "batchmean",
) -> Tensor:
    r"""Reverse KL, the mode-seeking divergence (used by MiniLLM and GKD with :math:`\beta = 1`).

    .. math::

        \mathrm{KL}(p_s \,\|\, p_t) = \sum_c p_s^{(c)} \left(\log p_s^{(c)} - \log p_t^{(c)}\right),
        \qquad p = \mathrm{softmax}(z / T)

    optionally multiplied by :math:`T^2` (``scale_by_t2``, off by default).

    Args:
        student_logits: ``[..., C]``, gradients flow into it.
        teacher_logits: ``[..., C]``, same shape; detached.
        temperature: :math:`T > 0`.
        scale_by_t2: multiply by :math:`T^2`.
        reduction: ``"none"`` (``[...]``), ``"batchmean"`` or ``"sum"``.
    """
    _validate("reverse_kl", student_logits, teacher_logits, reduction, temperature=temperature)
    log_p_s = _log_probs(student_logits, temperature)
    log_p_t = _log_probs(teacher_logits.detach(), temperature)
    per_row = F.kl_div(log_p_t, log_p_s, reduction="none", log_target=True).sum(-1)
    if scale_by_t2:
        per_row = per_row * temperature**2
    return _reduce(per_row, reduction)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Reduction = "batchmean",
) -> Tensor:
    r"""Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024, Eq. 1).

    Same semantics as TRL's ``GKDTrainer.generalized_jsd_loss``:

    .. math::

        m = \beta \, p_t + (1 - \beta) \, p_s \quad\text{(formed in log space with logsumexp)}

        \mathrm{JSD}_\beta = \beta \, \mathrm{KL}(p_t \,\|\, m) + (1 - \beta) \, \mathrm{KL}(p_s \,\|\, m)

    with :math:`p = \mathrm{softmax}(z / T)` and no :math:`T^2` factor. As in TRL, the endpoints
    are special-cased: :math:`\beta = 0` gives the forward KL :math:`\mathrm{KL}(p_t \| p_s)` and
    :math:`\beta = 1` the reverse KL :math:`\mathrm{KL}(p_s \| p_t)`. (The formula itself tends
    to 0 at both endpoints, so the loss is discontinuous there; this is TRL's convention.)

    One difference from TRL's reduction: ``"batchmean"`` divides by the number of rows
    (tokens). TRL divides by the number of unmasked tokens when given ``labels``, which is the
    same thing for ``generalized_jsd(s[mask], t[mask])``, but by ``B`` alone for unmasked
    ``[B, L, V]`` input. TRL's ``"mean"`` (which also averages over the vocabulary) is not offered.

    Args:
        student_logits: ``[..., C]``, gradients flow into it.
        teacher_logits: ``[..., C]``, same shape; detached.
        beta: :math:`\beta \in [0, 1]`, the teacher's weight in the mixture.
        temperature: :math:`T > 0`.
        reduction: ``"none"`` (``[...]``), ``"batchmean"`` or ``"sum"``.
    """
    _validate(
        "generalized_jsd", student_logits, teacher_logits, reduction,
        temperature=temperature, beta=beta,
    )
    log_p_s = _log_probs(student_logits, temperature)
    log_p_t = _log_probs(teacher_logits.detach(), temperature)
    if beta == 0:
        jsd = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(log_p_t, log_p_s, reduction="none", log_target=True)
    else:
        # log m = logsumexp(log p_s + log(1 - beta), log p_t + log(beta)): no exp/log round trip.
        log_m = torch.logsumexp(
            torch.stack([log_p_s + math.log1p(-beta), log_p_t + math.log(beta)]), dim=0
        )
        kl_teacher = F.kl_div(log_m, log_p_t, reduction="none", log_target=True)
        kl_student = F.kl_div(log_m, log_p_s, reduction="none", log_target=True)
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    return _reduce(jsd.sum(-1), reduction)


def tvd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    reduction: Reduction = "batchmean",
) -> Tensor:
    r"""Total variation distance, in :math:`[0, 1]` per row.

    .. math::

        \mathrm{TVD}(p_t, p_s) = \tfrac{1}{2} \sum_c \left| p_t^{(c)} - p_s^{(c)} \right|,
        \qquad p = \mathrm{softmax}(z / T)

    Args:
        student_logits: ``[..., C]``, gradients flow into it.
        teacher_logits: ``[..., C]``, same shape; detached.
        temperature: :math:`T > 0`.
        reduction: ``"none"`` (``[...]``), ``"batchmean"`` or ``"sum"``.
    """
    _validate("tvd", student_logits, teacher_logits, reduction, temperature=temperature)
    p_s = _log_probs(student_logits, temperature).exp()
    p_t = _log_probs(teacher_logits.detach(), temperature).exp()
    return _reduce(0.5 * (p_t - p_s).abs().sum(-1), reduction)


def logit_mse(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    reduction: Reduction = "batchmean",
) -> Tensor:
    r"""Squared error between raw logits, averaged over the classes of each row.

    .. math::

        \ell_{\text{row}} = \frac{1}{C} \sum_c \left(z_s^{(c)} - z_t^{(c)}\right)^2

    So ``"batchmean"`` is the mean over every element, i.e. ``F.mse_loss(student, teacher)``
    (the logit-matching loss of Ba & Caruana 2014, up to their factor 1/2); ``"none"`` gives
    ``[...]``; ``"sum"`` sums the per-row means.

    Args:
        student_logits: ``[..., C]``, gradients flow into it.
        teacher_logits: ``[..., C]``, same shape; detached.
        reduction: ``"none"`` (``[...]``), ``"batchmean"`` or ``"sum"``.
    """
    _validate("logit_mse", student_logits, teacher_logits, reduction)
    z_s = _upcast(student_logits)
    z_t = _upcast(teacher_logits.detach())
    return _reduce((z_s - z_t).pow(2).mean(-1), reduction)


def mix_with_ce(distill_loss: Tensor, student_logits: Tensor, labels: Tensor, *, alpha: float) -> Tensor:
    r"""Mix a distillation loss with the hard-label cross-entropy (Hinton et al. 2015, Sec. 2).

    .. math::

        \mathcal{L} = \alpha \, \mathcal{L}_{\text{distill}}
            + (1 - \alpha) \, \mathrm{CE}(z_s, y)

    ``alpha`` weights the *soft* (distillation) term. torchdistill's ``KDLoss`` uses the opposite
    convention (its ``alpha`` weights the cross-entropy), so its ``alpha`` is our ``1 - alpha``.
    The cross-entropy is the mean over rows whose label is not ``-100`` (``F.cross_entropy``'s
    default ``ignore_index``), at temperature 1; a batch without a labelled row (a transfer set's)
    adds none. It is skipped when ``alpha == 1``.

    Args:
        distill_loss: scalar (0-dim) tensor, e.g. ``kd_kl(...)`` with a scalar reduction.
        student_logits: ``[..., C]``.
        labels: ``[...]`` integer class indices.
        alpha: :math:`\alpha \in [0, 1]`.
    """
    problems = []
    if not is_finite_number(alpha) or not 0 <= alpha <= 1:
        problems.append(f"The 'alpha' argument of mix_with_ce must be in [0, 1]. Got {alpha!r}.")
    if distill_loss.ndim != 0:
        problems.append(
            "The 'distill_loss' argument of mix_with_ce must be a scalar (0-dim) tensor; "
            "compute it with reduction='batchmean' or 'sum'. "
            f"Got shape {tuple(distill_loss.shape)}."
        )
    if student_logits.ndim == 0 or labels.shape != student_logits.shape[:-1]:
        problems.append(
            "The 'labels' argument of mix_with_ce must have the shape of 'student_logits' without "
            f"its class dim. Got labels {tuple(labels.shape)} and logits "
            f"{tuple(student_logits.shape)}."
        )
    raise_problems(problems)
    if alpha == 1:
        return distill_loss
    logits = _upcast(student_logits)
    labels = labels.reshape(-1)
    if not (labels != -100).any():  # no labelled row in this batch (a transfer set): the soft term alone
        return alpha * distill_loss + 0.0 * logits.sum()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels)
    return alpha * distill_loss + (1 - alpha) * ce


# ----------------------------------------------------------------------------------------------
# helpers


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(_upcast(logits) / temperature, dim=-1)


def _reduce(per_row: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    # max(., 1): an empty batch (all tokens masked) gives 0, not NaN.
    return total / max(per_row.numel(), 1)


_UNSET = object()


def _validate(
    func: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    reduction: str,
    *,
    temperature: object = _UNSET,
    beta: object = _UNSET,
) -> None:
    """Collect every problem with the arguments of ``func`` and raise them together."""
    problems = []
    if temperature is not _UNSET and not (is_finite_number(temperature) and temperature > 0):
        problems.append(
            f"The 'temperature' argument of {func} must be a finite number > 0. Got {temperature!r}."
        )
    if beta is not _UNSET and not (is_finite_number(beta) and 0 <= beta <= 1):
        problems.append(f"The 'beta' argument of {func} must be in [0, 1]. Got {beta!r}.")
    if reduction not in _REDUCTIONS:
        problems.append(
            f"The 'reduction' argument of {func} must be one of {_REDUCTIONS}. Got {reduction!r}."
        )
    if student_logits.shape != teacher_logits.shape:
        problems.append(
            f"The 'student_logits' and 'teacher_logits' arguments of {func} must have the same "
            f"shape [..., C]. Got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    elif student_logits.ndim == 0:
        problems.append(
            f"The 'student_logits' argument of {func} must have a class dim, shape [..., C]. "
            "Got a 0-dim tensor."
        )
    raise_problems(problems)


