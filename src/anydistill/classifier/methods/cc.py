"""Correlation congruence for knowledge distillation (Peng et al., ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, tapped_shapes
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.space import LogUniform, Uniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def cc_correlation(embeddings: Tensor, *, gamma: float = 0.4, order: int = 2) -> Tensor:
    r"""The batch's correlation matrix under a Gaussian RBF kernel, approximated by its Taylor
    expansion to order :math:`P` (the paper's generalised kernel):

    .. math::

        C_{ij} = \sum_{p=0}^{P} e^{-2\gamma} \frac{(2\gamma)^p}{p!} \left(f_i^\top f_j\right)^p
            \;\approx\; e^{-\gamma \| f_i - f_j \|^2}

    (exact as :math:`P \to \infty` for unit-norm :math:`f`, since then
    :math:`\|f_i - f_j\|^2 = 2 - 2 f_i^\top f_j`). torchdistill's ``CCKDLoss`` builds the same
    matrix row by row (``compute_cc_mat_by_gaussian_rbf``).

    Args:
        embeddings: ``[B, D]``.
        gamma: :math:`\gamma > 0` (0.4 in torchdistill's configs).
        order: :math:`P \ge 0` (2 there).

    Returns:
        ``[B, B]``.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"The 'embeddings' argument of cc_correlation must have shape [B, D]. Got {tuple(embeddings.shape)}.")
    f = _upcast(embeddings)
    gram = f @ f.t()
    correlation = torch.ones_like(gram)
    for p in range(1, order + 1):
        correlation = correlation + (2 * gamma) ** p / math.factorial(p) * gram.pow(p)
    return math.exp(-2 * gamma) * correlation


def cc_loss(student_embeddings: Tensor, teacher_embeddings: Tensor, *, gamma: float = 0.4, order: int = 2) -> Tensor:
    r"""The paper's correlation congruence loss:

    .. math::

        \mathcal{L}_{CC} = \frac{1}{B^2} \left\| C_S - C_T \right\|_F^2

    with :math:`C` from `cc_correlation`. torchdistill's ``CCKDLoss(reduction='batchmean')``
    divides the *unsquared* Frobenius norm (``torch.dist``) by :math:`B^2` instead; this is the
    paper's squared norm (``cc_loss = torch.dist(C_s, C_t) ** 2 / B**2``).

    Args:
        student_embeddings: ``[B, D]``, gradients flow into it.
        teacher_embeddings: ``[B, D]``; gradients flow into it too (a trainable teacher-side
            embedding head is part of the method).
        gamma, order: the kernel's (see `cc_correlation`).

    Returns:
        Scalar loss.
    """
    if student_embeddings.shape != teacher_embeddings.shape:
        raise ValueError(
            "The 'student_embeddings' and 'teacher_embeddings' arguments of cc_loss must have the same shape [B, D]. "
            f"Got {tuple(student_embeddings.shape)} and {tuple(teacher_embeddings.shape)}."
        )
    c_s = cc_correlation(student_embeddings, gamma=gamma, order=order)
    c_t = cc_correlation(teacher_embeddings, gamma=gamma, order=order)
    return (c_s - c_t).pow(2).sum() / student_embeddings.shape[0] ** 2


class CC(DistillationMethod):
    """Make the student's instance-to-instance correlations congruent with the teacher's: linear
    heads embed both networks' penultimate features into a common space, where a Gaussian-RBF
    correlation matrix over the batch is compared:

        L = ce_weight * CE(z_s, y) + weight * cc_loss(g_s(f_s), g_t(f_t)) [+ kd_weight * T^2 KL].

    Both heads (``embed_dim`` outputs each) train with the student, as in RepDistiller's and
    torchdistill's set-ups; with ``normalize`` the embeddings are L2-normalised first, which the
    Taylor expansion of the RBF kernel assumes.

    Args:
        teacher_layer, student_layer: module paths of the penultimate features (flattened).
        embed_dim: width of the embedding heads (128 in RepDistiller and torchdistill).
        gamma, order: the RBF kernel's gamma and the Taylor order P (0.4 and 2, torchdistill).
        normalize: L2-normalise the embeddings (torchdistill's ``Linear4CCKD`` does not).
        weight: weight of the CC term (0.02: RepDistiller's CIFAR-100 script).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off) and its T.
    """

    family = "classifier"
    paper = "Peng et al. 2019, Correlation Congruence for Knowledge Distillation (ICCV 2019, arXiv:1904.01802)"
    # The official configs weight CC by 0.003 (torchdistill, ImageNet) to 0.02 (RepDistiller, CIFAR-100),
    # each for its own variant of the loss; gamma 0.4 with P = 2 is torchdistill's kernel.
    search_space = {"weight": LogUniform(1e-3, 10.0), "gamma": Uniform(0.1, 1.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "classifier.2",
        student_layer: str = "classifier.2",
        embed_dim: PositiveInt = 128,
        gamma: PositiveFloat = 0.4,
        order: PositiveInt = 2,
        normalize: bool = True,
        weight: NonNegativeFloat = 0.02,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.teacher_layer, self.student_layer, self.embed_dim = teacher_layer, student_layer, embed_dim
        self.gamma, self.order, self.normalize = gamma, order, normalize
        self.weight, self.ce_weight = weight, ce_weight
        self.kd_weight, self.temperature = kd_weight, temperature
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def setup(self, stage: str) -> None:
        if self.embed_s is not None:
            return
        student_shapes, teacher_shapes = tapped_shapes(self, [self.student_layer], [self.teacher_layer])
        self.embed_s = nn.Linear(student_shapes[self.student_layer][1:].numel(), self.embed_dim)
        self.embed_t = nn.Linear(teacher_shapes[self.teacher_layer][1:].numel(), self.embed_dim)

    def embed(self, head: nn.Linear, features: Tensor) -> Tensor:
        out = head(features.flatten(1).to(head.weight.dtype))
        return F.normalize(out, dim=1) if self.normalize else out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, student_features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        cc = cc_loss(
            self.embed(self.embed_s, student_features[self.student_layer]),
            self.embed(self.embed_t, signal.features[self.teacher_layer].detach()),
            gamma=self.gamma,
            order=self.order,
        )
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * cc
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/cc", cc, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
