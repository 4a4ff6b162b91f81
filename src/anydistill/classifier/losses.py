"""Feature and logit losses of classifier distillation methods: FitNets, AT, DKD.

Pure functions of tensors (no hooks, no modules), computed in at least fp32 (bf16/fp16 inputs
are upcast, fp64 is kept). Teacher tensors are targets and are detached. The methods that use
these losses own the loss weights, the regressors and any warm-up schedule.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.core.checks import is_finite_number, raise_problems


def hint_loss(student_regressed: Tensor, teacher_hint: Tensor) -> Tensor:
    r"""FitNets hint loss (Romero et al., ICLR 2015, Eq. 3).

    The paper's loss is

    .. math::

        \mathcal{L}_{HT} = \tfrac{1}{2} \left\| u_h(x) - r(v_g(x)) \right\|^2

    with :math:`u_h` the teacher's hint layer, :math:`v_g` the student's guided layer and
    :math:`r` the regressor. Here it is the mean squared error over all elements,
    ``F.mse_loss(r(v_g(x)), u_h(x))``, the convention of torchdistill and mdistiller's
    ``FitNet``: the paper's 1/2 and its sum over elements are absorbed into the loss weight.

    Args:
        student_regressed: :math:`r(v_g(x))`, any shape, e.g. ``[B, C_t, H_t, W_t]``.
        teacher_hint: :math:`u_h(x)`, the same shape (matching it is the regressor's job);
            detached.

    Returns:
        Scalar loss.
    """
    if student_regressed.shape != teacher_hint.shape:
        raise ValueError(
            "The 'student_regressed' argument of hint_loss must have the shape of 'teacher_hint' "
            "(the method's regressor maps the student's features to the teacher's shape). "
            f"Got {tuple(student_regressed.shape)} and {tuple(teacher_hint.shape)}."
        )
    return F.mse_loss(_upcast(student_regressed), _upcast(teacher_hint.detach()))


def attention_map(features: Tensor, *, p: float = 2) -> Tensor:
    r"""Activation-based spatial attention map (Zagoruyko & Komodakis, ICLR 2017).

    .. math::

        Q = \frac{F(A)}{\| F(A) \|_2}, \qquad
        F(A) = \frac{1}{C} \sum_{c=1}^{C} |A_c|^p \quad\text{(flattened over } H \times W)

    as the official code's ``at(x) = F.normalize(x.pow(2).mean(1).view(B, -1))``. The paper's
    :math:`F^p_{sum}` sums over channels instead of averaging; the :math:`1/C` cancels in the
    normalisation. ``|A|^p`` (the paper's definition) equals the code's ``x.pow(p)`` for even
    ``p`` and for non-negative (post-ReLU) features.

    Args:
        features: ``[B, C, H, W]``.
        p: exponent :math:`p > 0` (2 in the paper's experiments and the code).

    Returns:
        ``[B, H*W]``, each row of unit L2 norm.
    """
    raise_problems(_feature_problems("attention_map", "features", features) + _p_problems("attention_map", p))
    return F.normalize(_upcast(features).abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_features: Tensor, teacher_features: Tensor, *, p: float = 2) -> Tensor:
    r"""Attention transfer loss for one pair of layers, as in the official code's ``at_loss``.

    .. math::

        \mathcal{L}_{AT} = \frac{1}{B \, H W} \sum_{b=1}^{B} \left\| Q_s^{(b)} - Q_t^{(b)} \right\|_2^2

    with :math:`Q` from :func:`attention_map`. This is ``(at(s) - at(t)).pow(2).mean()`` of
    github.com/szagoruyko/attention-transfer and torchdistill's ``ATLoss(mode='code')``.

    The paper (Eq. 2) writes :math:`\frac{\beta}{2} \sum_j \| Q_s^j - Q_t^j \|_p` (a norm, not
    its square) with :math:`\beta = 10^3` divided by the attention map's size and the batch size.
    The official code instead adds ``beta * sum_j at_loss(s_j, t_j)`` with ``beta = 1e3``
    (``cifar.py``), i.e. the squared distance, no 1/2, and the division by :math:`B \cdot HW`
    done by the mean; mdistiller's AT uses the same weight (``FEAT_WEIGHT = 1000``). A method
    built on this function therefore weights each layer pair by :math:`10^3` to match the
    official experiments (torchdistill's ``mode='paper'`` is the norm-based variant).

    Channel counts may differ (the map averages over channels). If the spatial sizes differ, the
    feature maps are adaptive-average-pooled to the smaller size, per dim, before the maps are
    computed (mdistiller does this for square maps; the official code needs equal sizes).

    Args:
        student_features: ``[B, C_s, H_s, W_s]``, gradients flow into it.
        teacher_features: ``[B, C_t, H_t, W_t]``; detached.
        p: exponent of :func:`attention_map`.

    Returns:
        Scalar loss.
    """
    func = "attention_transfer_loss"
    problems = (
        _feature_problems(func, "student_features", student_features)
        + _feature_problems(func, "teacher_features", teacher_features)
        + _p_problems(func, p)
    )
    if not problems and student_features.shape[0] != teacher_features.shape[0]:
        problems.append(
            f"The 'student_features' and 'teacher_features' arguments of {func} must have the same "
            f"batch size. Got {student_features.shape[0]} and {teacher_features.shape[0]}."
        )
    raise_problems(problems)
    f_s = _upcast(student_features)
    f_t = _upcast(teacher_features.detach())
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    if f_s.shape[2:] != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if f_t.shape[2:] != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return (attention_map(f_s, p=p) - attention_map(f_t, p=p)).pow(2).mean()


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    r"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), as mdistiller's ``dkd_loss``.

    With :math:`p = \mathrm{softmax}(z / T)` and :math:`t` the ground-truth class, KD splits into

    * TCKD, the KL between binary target / non-target distributions
      :math:`b = [p^{(t)}, 1 - p^{(t)}]`:
      :math:`\mathrm{TCKD} = \mathrm{KL}(b_T \| b_S)`;
    * NCKD, the KL between the distributions over non-target classes
      :math:`\hat p^{(c)} = p^{(c)} / (1 - p^{(t)})`, :math:`c \ne t`:
      :math:`\mathrm{NCKD} = \mathrm{KL}(\hat p_T \| \hat p_S)`,

    (``KD = TCKD + (1 - p_T^{(t)}) NCKD``, the paper's Eq. 4), and DKD reweights them:

    .. math::

        \mathcal{L}_{DKD} = \frac{T^2}{B} \sum_{b=1}^{B}
            \left( \alpha \, \mathrm{TCKD}_b + \beta \, \mathrm{NCKD}_b \right)

    As in mdistiller, :math:`\hat p` is computed as a softmax of :math:`z / T - 1000 \cdot
    \mathbb{1}[c = t]` (the target class's probability underflows to 0). The binary
    distributions are formed in log space (a logsumexp over the non-target classes) rather than
    mdistiller's ``log(sum of probabilities)``: the same value, without ``log(0)`` when the
    student is very confident. The cross-entropy term and mdistiller's warm-up
    ``min(epoch / 20, 1)`` belong to the method, not to this loss.

    Args:
        student_logits: ``[B, C]`` with ``C >= 2``, gradients flow into it.
        teacher_logits: ``[B, C]``; detached.
        labels: ``[B]`` integer ground-truth classes.
        alpha: TCKD weight :math:`\alpha \ge 0` (1 in the paper).
        beta: NCKD weight :math:`\beta \ge 0` (8 for CIFAR-100 in the paper).
        temperature: :math:`T > 0` (4 on CIFAR-100).

    Returns:
        Scalar loss.
    """
    func = "dkd_loss"
    problems = []
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (is_finite_number(value) and value >= 0):
            problems.append(f"The '{name}' argument of {func} must be a finite number >= 0. Got {value!r}.")
    if not (is_finite_number(temperature) and temperature > 0):
        problems.append(
            f"The 'temperature' argument of {func} must be a finite number > 0. Got {temperature!r}."
        )
    shape = student_logits.shape
    if shape != teacher_logits.shape or len(shape) != 2 or shape[1] < 2:
        problems.append(
            f"The 'student_logits' and 'teacher_logits' arguments of {func} must both have shape "
            f"[B, C] with C >= 2. Got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    elif labels.shape != student_logits.shape[:1] or labels.is_floating_point() or labels.is_complex():
        problems.append(
            f"The 'labels' argument of {func} must hold integer classes, shape [B] = "
            f"[{student_logits.shape[0]}]. Got shape {tuple(labels.shape)}, dtype {labels.dtype}."
        )
    raise_problems(problems)

    batch_size, num_classes = student_logits.shape
    z_s = _upcast(student_logits) / temperature
    z_t = _upcast(teacher_logits.detach()) / temperature
    gt_mask = F.one_hot(labels.long(), num_classes).bool()  # [B, C]

    # TCKD: log b = [log p^(t), log sum_{c != t} p^(c)], both from log_softmax.
    log_b_s = _binary_log_probs(F.log_softmax(z_s, dim=1), gt_mask)
    log_b_t = _binary_log_probs(F.log_softmax(z_t, dim=1), gt_mask)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="sum", log_target=True)

    # NCKD: pushing the target logit down by 1000 renormalises over the non-target classes.
    log_p_hat_s = F.log_softmax(z_s - 1000.0 * gt_mask, dim=1)
    log_p_hat_t = F.log_softmax(z_t - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_p_hat_s, log_p_hat_t, reduction="sum", log_target=True)

    return (alpha * tckd + beta * nckd) * temperature**2 / batch_size


# ----------------------------------------------------------------------------------------------
# helpers


def _binary_log_probs(log_p: Tensor, gt_mask: Tensor) -> Tensor:
    """``[B, C]`` log-probabilities -> ``[B, 2]`` log [target, non-target] probabilities."""
    log_target = log_p.masked_fill(~gt_mask, -math.inf).logsumexp(1, keepdim=True)
    log_other = log_p.masked_fill(gt_mask, -math.inf).logsumexp(1, keepdim=True)
    return torch.cat([log_target, log_other], dim=1)


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


def _feature_problems(func: str, name: str, features: Tensor) -> list[str]:
    if features.ndim == 4:
        return []
    return [
        f"The '{name}' argument of {func} must be a feature map of shape [B, C, H, W]. "
        f"Got shape {tuple(features.shape)}."
    ]


def _p_problems(func: str, p: object) -> list[str]:
    if is_finite_number(p) and p > 0:
        return []
    return [f"The 'p' argument of {func} must be a finite number > 0. Got {p!r}."]


