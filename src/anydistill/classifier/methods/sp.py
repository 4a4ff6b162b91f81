"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features
from anydistill.core.checks import raise_problems
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher


def similarity_matrix(features: Tensor) -> Tensor:
    r"""SP's row-normalised batch similarity matrix.

    .. math::

        \tilde G = Q Q^\top, \qquad G_{[i, :]} = \tilde G_{[i, :]} / \| \tilde G_{[i, :]} \|_2

    with :math:`Q` the features flattened to ``[B, C*H*W]`` (the paper's reshape of the
    activation map). ``F.normalize`` divides by :math:`\max(\|\cdot\|, 10^{-12})`, as the
    official code (RepDistiller's ``Similarity``, "verified by original author").

    Args:
        features: ``[B, ...]``, e.g. ``[B, C, H, W]``.

    Returns:
        ``[B, B]``, each row of unit L2 norm (a zero row stays zero).
    """
    flat = features.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def sp_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    r"""SP loss for one pair of layers.

    .. math::

        \mathcal{L}_{SP} = \frac{1}{B^2} \left\| G_T - G_S \right\|_F^2

    with :math:`G` from :func:`similarity_matrix`. Only the batch sizes must agree: channel counts
    and spatial sizes may differ, since both matrices are ``[B, B]``. The paper sums this over
    the layer pairs and weights it by :math:`\gamma` (3000 in RepDistiller, whose SP the first
    author verified, and in mdistiller, on CIFAR-100).

    Args:
        student_features: ``[B, ...]``, gradients flow into it.
        teacher_features: ``[B, ...]``; detached.

    Returns:
        Scalar loss.
    """
    problems = [
        f"The '{name}' argument of sp_loss must have a batch dim and features, shape [B, ...]. Got {tuple(x.shape)}."
        for name, x in (("student_features", student_features), ("teacher_features", teacher_features))
        if x.ndim < 2
    ]
    if not problems and student_features.shape[0] != teacher_features.shape[0]:
        problems.append(
            "The 'student_features' and 'teacher_features' arguments of sp_loss must have the same batch size. "
            f"Got {student_features.shape[0]} and {teacher_features.shape[0]}."
        )
    raise_problems(problems)
    g_s = similarity_matrix(_upcast(student_features))
    g_t = similarity_matrix(_upcast(teacher_features.detach()))
    return (g_t - g_s).pow(2).sum() / student_features.shape[0] ** 2


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


class SP(DistillationMethod):
    """Make the student's pairwise similarities within a batch match the teacher's: samples that
    activate the teacher's layer alike should activate the student's alike, added to the label loss:

        L = ce_weight * CE(z_s, y) + gamma * L_SP

    as RepDistiller (``-b 3000``) and mdistiller (``SP.LOSS.FEAT_WEIGHT = 3000``) on CIFAR-100,
    which both take the output of the last convolutional stage.

    Args:
        teacher_layer, student_layer: module paths of the paired layers (the last convolutional
            stage, before pooling, in the references); any [B, ...] output works, sizes may differ.
        gamma: weight of the SP term.
        ce_weight: weight of the label cross-entropy.
    """

    family = "classifier"
    paper = "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation (ICCV 2019, arXiv:1907.09682)"
    # RepDistiller and mdistiller use gamma = 3000 on CIFAR-100; the range brackets it.
    search_space = {"gamma": LogUniform(100.0, 30000.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "features.5",
        student_layer: str = "features.5",
        gamma: NonNegativeFloat = 3000.0,
        ce_weight: NonNegativeFloat = 1.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.teacher_layer, self.student_layer = teacher_layer, student_layer
        self.gamma, self.ce_weight = gamma, ce_weight

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        shapes = [("teacher_layer", self.teacher_layer, teacher_shapes.get(self.teacher_layer))]
        shapes += [("student_layer", self.student_layer, student_shapes.get(self.student_layer))]
        return [
            f"sp needs [B, ...] features, but {name} '{path}' gives {tuple(shape)}; "
            f"set {name} to a layer with a batch dim and features (e.g. the last convolutional stage)."
            for name, path, shape in shapes
            if shape is not None and len(shape) < 2
        ]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        sp = sp_loss(features[self.student_layer], signal.features[self.teacher_layer])
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.gamma * sp
        size = batch["y"].shape[0]
        self.log_train("train/sp", sp, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
