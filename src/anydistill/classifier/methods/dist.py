"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, teacher_signal
from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher


def mean_pearson(a: Tensor, b: Tensor, *, eps: float = 1e-8) -> Tensor:
    r"""Mean over rows of the Pearson correlation between matching rows of ``a`` and ``b``.

    .. math::

        \rho(u, v) = \frac{(u - \bar u)^\top (v - \bar v)}{\|u - \bar u\| \, \|v - \bar v\| + \epsilon}

    The :math:`\epsilon` is added to the product of the norms, as in the official code
    (``cosine_similarity`` in hunto/DIST_KD); a constant row has correlation 0.

    Args:
        a, b: ``[N, M]``; row :math:`n` of ``a`` is correlated with row :math:`n` of ``b``.
        eps: added to the denominator.

    Returns:
        Scalar, the mean of the :math:`N` correlations.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)).mean()


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    r"""DIST's relation loss, without the cross-entropy.

    With :math:`Y = \mathrm{softmax}(Z / \tau)` row-wise (``[B, C]``),

    .. math::

        \mathcal{L}_{inter} = 1 - \frac{1}{B} \sum_{i=1}^{B} \rho(Y^{(s)}_{i,:}, Y^{(t)}_{i,:}),
        \qquad
        \mathcal{L}_{intra} = 1 - \frac{1}{C} \sum_{j=1}^{C} \rho(Y^{(s)}_{:,j}, Y^{(t)}_{:,j})

        \mathcal{L}_{DIST} = \tau^2 \left( \beta \, \mathcal{L}_{inter} + \gamma \, \mathcal{L}_{intra} \right)

    with :math:`\rho` the Pearson correlation of :func:`mean_pearson`: inter-class relations
    compare each sample's class distribution, intra-class relations each class's scores across
    the batch. The :math:`\tau^2` factor is the official code's (``DIST(tau=...)`` in
    hunto/image_classification_sota) and torchdistill's ``DISTLoss``; it is 1 at the ImageNet
    setting :math:`\tau = 1`.

    Args:
        student_logits: ``[B, C]``, gradients flow into it.
        teacher_logits: ``[B, C]``; detached.
        beta: weight of the inter-class term (1 on ImageNet).
        gamma: weight of the intra-class term (1 on ImageNet).
        temperature: :math:`\tau > 0` (1 on ImageNet).

    Returns:
        Scalar loss, in :math:`[0, 2 \tau^2 (\beta + \gamma)]`.
    """
    problems = [
        f"The '{name}' argument of dist_loss must be a finite number >= 0. Got {value!r}."
        for name, value in (("beta", beta), ("gamma", gamma))
        if not (is_finite_number(value) and value >= 0)
    ]
    if not (is_finite_number(temperature) and temperature > 0):
        problems.append(f"The 'temperature' argument of dist_loss must be a finite number > 0. Got {temperature!r}.")
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        problems.append(
            "The 'student_logits' and 'teacher_logits' arguments of dist_loss must both have shape [B, C]. "
            f"Got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    raise_problems(problems)
    y_s = F.softmax(_upcast(student_logits) / temperature, dim=1)
    y_t = F.softmax(_upcast(teacher_logits.detach()) / temperature, dim=1)
    inter = 1 - mean_pearson(y_s, y_t)
    intra = 1 - mean_pearson(y_s.T, y_t.T)  # the columns: each class across the batch
    return temperature**2 * (beta * inter + gamma * intra)


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


class DIST(DistillationMethod):
    """Replace KD's exact match of probabilities by a match of their relations: the Pearson
    correlation between the student's and the teacher's predictions, per sample (inter-class)
    and per class across the batch (intra-class), added to the label loss:

        L = ce_weight * CE(z_s, y) + tau^2 * (beta * L_inter + gamma * L_intra)

    as the official ImageNet recipe (``DIST(beta=1, gamma=1, tau=1)``, both loss weights 1),
    which torchdistill's DIST config follows.

    Args:
        beta, gamma: weights of the inter- and intra-class terms.
        temperature: tau, softening both distributions (with a tau^2 factor).
        ce_weight: weight of the label cross-entropy.
    """

    family = "classifier"
    paper = "Huang, You, Wang, Qian & Xu 2022, Knowledge Distillation from A Stronger Teacher (NeurIPS 2022, arXiv:2205.10536)"
    # The official ImageNet recipe uses beta = gamma = tau = 1; the ranges bracket it.
    search_space = {"beta": LogUniform(0.25, 4.0), "gamma": LogUniform(0.25, 4.0), "temperature": LogUniform(1.0, 4.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        beta: NonNegativeFloat = 1.0,
        gamma: NonNegativeFloat = 1.0,
        temperature: PositiveFloat = 1.0,
        ce_weight: NonNegativeFloat = 1.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.beta, self.gamma, self.temperature, self.ce_weight = beta, gamma, temperature, ce_weight

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student_logits = self.student(batch["x"])
        teacher_logits = teacher_signal(self, batch).logits
        relation = dist_loss(
            student_logits, teacher_logits, beta=self.beta, gamma=self.gamma, temperature=self.temperature
        )
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + relation
        size = batch["y"].shape[0]
        self.log_train("train/dist", relation, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
