"""Self-supervised knowledge distillation using singular value decomposition (Lee, Kim & Song, ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def position_matrix(features: Tensor) -> Tensor:
    """A feature map ``[B, C, H, W]`` as ``[B, H*W, C]`` (one row per position), flat features
    ``[B, D]`` as ``[B, 1, D]``: the matrix whose SVD the paper takes."""
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)
    if features.ndim == 2:
        return features.unsqueeze(1)
    raise ValueError(f"kdsvd takes feature maps [B, C, H, W] or flat features [B, D]. Got {tuple(features.shape)}.")


def right_singular_vectors(features: Tensor, n: int) -> tuple[Tensor, Tensor]:
    r"""The top ``n`` singular values and right singular vectors of each sample's position matrix
    :math:`X_b = U \Sigma V^\top` (``[H W, C]``): ``(s [B, n], v [B, C, n])``, ``s`` L2-normalised
    over its ``n`` values and each column of ``v`` over the channels, non-finite entries set to 0
    (RepDistiller's and mdistiller's ``svd``). Fewer than ``n`` come back when ``min(H W, C) < n``.

    When gradients flow, a sample whose gradient through the decomposition is not finite (repeated
    singular values) gets a zero gradient instead, as the original TensorFlow code's SVD gradient.
    """
    x = _upcast(position_matrix(features))
    if x.requires_grad:
        x.register_hook(_zero_nonfinite_samples)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s)[:, :n], _finite(vh.transpose(1, 2))[:, :, :n]
    return F.normalize(s, dim=1), F.normalize(v, dim=1)


def align_singular_vectors(student_v: Tensor, teacher_v: Tensor) -> Tensor:
    """For each teacher vector (``[B, C, k]``), the student vector among ``[B, C, m]`` with the
    largest absolute cosine, its sign flipped to agree (RepDistiller's ``align_rsv``): ``[B, C, k]``."""
    with torch.no_grad():
        cosine = student_v.transpose(1, 2) @ teacher_v  # [B, m, k]
        best = cosine.abs().amax(1, keepdim=True)
        mask = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return student_v @ mask


def kdsvd_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], k: int = 1) -> Tensor:
    r"""KD-SVD's loss over consecutive tapped layers. At each layer :math:`l`, the teacher's top
    :math:`k` right singular vectors :math:`v^T_l` (``[B, C_l, k]``, weighted by the normalised
    singular values) and the student's best-aligned ones among its top :math:`k + 3`,
    :math:`v^S_l` (weighted by the *teacher's* singular values), are compared through the RBF of
    their entries' differences with the previous layer's:

    .. math::

        G_l[b, i, j, n] = \exp\!\left( -\frac{(v_l[b, i, n] - v_{l-1}[b, j, n])^2}{8} \right),
        \qquad
        \mathcal{L} = \frac{1}{B} \sum_{l \ge 2} \sum_{b, i, j, n} \left( G^S_l - G^T_l \right)^2

    (non-finite terms dropped), as RepDistiller's and mdistiller's ``KDSVD``. The teacher's
    singular vectors take the sign that makes their entries' sum non-negative (the references
    keep whatever sign the SVD returns, which the RBF is not invariant to).

    Args:
        student_maps: per layer ``[B, C_l, H, W]`` or ``[B, C_l]``; gradients flow into them.
        teacher_maps: the same layers' teacher outputs, with the same channel counts ``C_l`` (the
            spatial sizes may differ); detached.
        k: singular vectors per layer (1).

    Returns:
        Scalar loss (0 for a single layer: there is no pair of consecutive layers).
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"kdsvd_loss pairs layers one to one; got {len(student_maps)} student and {len(teacher_maps)} teacher maps.")
    total, previous = _upcast(student_maps[0]).sum() * 0.0, None
    for f_s, f_t in zip(student_maps, teacher_maps):
        if f_s.shape[1] != f_t.shape[1]:
            raise ValueError(f"kdsvd_loss needs the teacher's channel count at every layer; got {f_s.shape[1]} and {f_t.shape[1]}.")
        s_t, v_t = right_singular_vectors(f_t.detach(), k)
        v_t = v_t * torch.where(v_t.sum(1, keepdim=True) < 0, -1.0, 1.0)
        _, v_s = right_singular_vectors(f_s, k + 3)
        weight = s_t.unsqueeze(1)  # [B, 1, k]
        v_s, v_t = align_singular_vectors(v_s, v_t) * weight, v_t * weight
        if previous is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - previous[0].unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - previous[1].unsqueeze(1)).pow(2) / 8)
            squared = (rbf_s - rbf_t).pow(2)
            total = total + torch.where(torch.isfinite(squared), squared, torch.zeros_like(squared)).sum()
        previous = (v_s, v_t)
    return total / student_maps[0].shape[0]


class KDSVD(DistillationMethod):
    """Transfer how the dominant feature directions of consecutive layers relate: the top right
    singular vectors of each tapped layer (per sample, over positions), their cross-layer RBF
    correlations matched between student and teacher:

        L = ce_weight * CE(z_s, y) + weight * kdsvd_loss(student_maps, teacher_maps, k) [+ kd_weight * T^2 KL],

    as mdistiller (CE 1, KDSVD 1, k 1) and RepDistiller. The RBF compares singular vectors entry by
    entry, so every student layer needs the teacher layer's channel count (the spatial sizes may
    differ), and the loss needs at least two layers.

    Args:
        teacher_layers, student_layers: paired module paths (same length, at least two), conv maps
            or flat features.
        k: singular vectors per layer (1).
        weight: weight of the KD-SVD term (1).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off) and its T.
    """

    family = "classifier"
    paper = "Lee, Kim & Song 2018, Self-supervised Knowledge Distillation Using Singular Value Decomposition (ECCV 2018, arXiv:1807.06819)"
    # mdistiller weights KD-SVD by 1; a decade either side.
    search_space = {"weight": LogUniform(0.1, 10.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        student_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        k: PositiveInt = 1,
        weight: NonNegativeFloat = 1.0,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers) or len(teacher_layers) < 2:
            raise ValueError(
                f"kdsvd compares consecutive layers: teacher_layers has {len(teacher_layers)} entries and student_layers "
                f"{len(student_layers)}; give both the same number, at least two."
            )
        self.teacher_layers, self.student_layers, self.k = list(teacher_layers), list(student_layers), k
        self.weight, self.ce_weight, self.kd_weight, self.temperature = weight, ce_weight, kd_weight, temperature

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            s_shape, t_shape = student_shapes[s], teacher_shapes[t]
            where = f"(student '{s}', teacher '{t}')"
            if len(s_shape) not in (2, 4) or len(t_shape) not in (2, 4):
                problems.append(f"kdsvd takes conv maps [C, H, W] or flat features [D], not {tuple(s_shape[1:])} and {tuple(t_shape[1:])} {where}")
            elif s_shape[1] != t_shape[1]:
                problems.append(
                    f"kdsvd compares singular vectors channel by channel, but the student layer has {s_shape[1]} channels and "
                    f"the teacher layer {t_shape[1]} {where}; give the student the teacher's widths there (as digits/kdsvd does)"
                )
            else:
                rank = min(_positions(t_shape), t_shape[1])
                if self.k > rank:
                    problems.append(f"kdsvd's k ({self.k}) exceeds the {rank} singular vectors of teacher layer '{t}' "
                                    f"{tuple(t_shape[1:])}; set k to at most {rank}")
        return problems

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
        svd = kdsvd_loss([features[p] for p in self.student_layers], [signal.features[p] for p in self.teacher_layers], self.k)
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * svd
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/kdsvd", svd, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _positions(shape: torch.Size) -> int:
    return shape[2] * shape[3] if len(shape) == 4 else 1


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _zero_nonfinite_samples(grad: Tensor) -> Tensor:
    finite = torch.isfinite(grad).flatten(1).all(1).view(-1, *([1] * (grad.ndim - 1)))
    return torch.where(finite, grad, torch.zeros_like(grad))


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
