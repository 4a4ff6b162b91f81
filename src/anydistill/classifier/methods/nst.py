"""Neuron selectivity transfer (Huang & Wang, 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def nst_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    r"""Squared maximum mean discrepancy between the student's and the teacher's neuron
    selectivity patterns, with the polynomial kernel :math:`k(a, b) = (a^\top b + c)^d`,
    :math:`d = 2`, :math:`c = 0` (the paper's Eq. 4 and its best kernel on CIFAR):

    .. math::

        \mathcal{L}_{MMD^2} = \frac{1}{C_T^2} \sum_{i, i'} k(f_T^i, f_T^{i'})
            + \frac{1}{C_S^2} \sum_{j, j'} k(f_S^j, f_S^{j'})
            - \frac{2}{C_T C_S} \sum_{i, j} k(f_S^j, f_T^i)

    where :math:`f^i \in \mathbb{R}^{HW}` is channel :math:`i`'s map, flattened and L2-normalised
    over positions; averaged over the batch. This is mdistiller's and RepDistiller's
    ``nst_loss`` (``full_loss=True``). If the spatial sizes differ, the larger map is
    average-pooled, per dim, to the smaller size first (as both do for square maps).

    Args:
        student_features: ``[B, C_S, H_S, W_S]``, gradients flow into it.
        teacher_features: ``[B, C_T, H_T, W_T]``; detached. The channel counts may differ.

    Returns:
        Scalar loss.
    """
    for name, value in (("student_features", student_features), ("teacher_features", teacher_features)):
        if value.ndim != 4:
            raise ValueError(f"The '{name}' argument of nst_loss must have shape [B, C, H, W]. Got {tuple(value.shape)}.")
    if student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError(
            "The 'student_features' and 'teacher_features' arguments of nst_loss must have the same batch size. "
            f"Got {student_features.shape[0]} and {teacher_features.shape[0]}."
        )
    f_s, f_t = _upcast(student_features), _upcast(teacher_features.detach())
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    f_s = f_s if f_s.shape[2:] == size else F.adaptive_avg_pool2d(f_s, size)
    f_t = f_t if f_t.shape[2:] == size else F.adaptive_avg_pool2d(f_t, size)
    f_s = F.normalize(f_s.flatten(2), dim=2)  # [B, C_S, HW], each channel's map of unit norm
    f_t = F.normalize(f_t.flatten(2), dim=2)
    return (
        _poly_kernel_mean(f_t, f_t) + _poly_kernel_mean(f_s, f_s) - 2 * _poly_kernel_mean(f_s, f_t)
    )


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Mean over batch and channel pairs of (a_i . b_j)^2, for a [B, Ca, N] and b [B, Cb, N]."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


class NST(DistillationMethod):
    """Match the distributions of the student's and the teacher's neuron selectivity patterns
    (each channel's spatial activation map) at paired layers, by squared MMD:

        L = ce_weight * CE(z_s, y) + weight * sum_pairs nst_loss(F_s, F_t) [+ kd_weight * T^2 KL],

    as mdistiller (CE 1, feature weight 50) and RepDistiller (``--distill nst -a 0 -b 50``). The
    paper writes the term as lambda / 2 times the MMD; ``weight`` multiplies the MMD itself.

    Args:
        teacher_layers, student_layers: paired module paths (same length); feature maps [B, C, H, W].
        weight: weight of the NST term (sum over pairs).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off, as officially) and its T.
    """

    family = "classifier"
    paper = "Huang & Wang 2017, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (arXiv:1707.01219)"
    # The official CIFAR-100 weight is 50; this brackets it by 10x either way.
    search_space = {"weight": LogUniform(5.0, 500.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        student_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        weight: NonNegativeFloat = 50.0,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers) or not teacher_layers:
            raise ValueError(
                f"nst pairs layers one to one: teacher_layers has {len(teacher_layers)} entries and student_layers "
                f"{len(student_layers)}; give both the same number (at least one)."
            )
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.weight, self.ce_weight = weight, ce_weight
        self.kd_weight, self.temperature = kd_weight, temperature

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        shapes = [("teacher", p, teacher_shapes[p]) for p in self.teacher_layers]
        shapes += [("student", p, student_shapes[p]) for p in self.student_layers]
        return [
            f"nst needs feature maps [C, H, W], but the {role} layer '{path}' gives {tuple(shape[1:])}; tap a convolutional layer."
            for role, path, shape in shapes
            if len(shape) != 4
        ]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, student_features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
        nst = sum(nst_loss(student_features[s], signal.features[t]) for s, t in zip(self.student_layers, self.teacher_layers))
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * nst
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/nst", nst, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
