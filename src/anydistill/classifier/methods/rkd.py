"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features
from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor, *, eps: float = 1e-12) -> Tensor:
    r"""RKD-D, the distance-wise loss.

    .. math::

        \psi_D(t_i, t_j) = \frac{\| t_i - t_j \|_2}{\mu}, \qquad
        \mu = \frac{1}{B(B-1)} \sum_{i \ne j} \| t_i - t_j \|_2

        \mathcal{L}_{RKD\text{-}D} = \frac{1}{B^2} \sum_{i, j}
            \ell_\delta\big(\psi_D(s_i, s_j), \psi_D(t_i, t_j)\big)

    with :math:`\ell_\delta` the Huber loss of threshold 1 (``F.smooth_l1_loss``). The paper sums
    over the pairs; the official code, RepDistiller, mdistiller and torchdistill take the mean over
    all :math:`B^2` ordered pairs, the diagonal (0 on both sides) included, and so does this.
    Distances come from the Gram expansion :math:`\|a\|^2 + \|b\|^2 - 2 a^\top b`, clamped at
    ``eps`` before the square root, as in those implementations.

    Args:
        student_emb: ``[B, ...]`` (flattened to ``[B, D_s]``), gradients flow into it.
        teacher_emb: ``[B, ...]`` (flattened to ``[B, D_t]``; ``D_t`` may differ); detached.
        eps: floor of the squared distances (keeps the square root's gradient finite).

    Returns:
        Scalar loss; 0 for ``B < 2`` (no pair; the references return NaN).
    """
    s, t = _flat_pair("rkd_distance_loss", student_emb, teacher_emb)
    if s.shape[0] < 2:
        return s.sum() * 0.0
    with torch.no_grad():
        t_d = _normalised_distances(t, eps)
    return F.smooth_l1_loss(_normalised_distances(s, eps), t_d)


def rkd_angle_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    r"""RKD-A, the angle-wise loss.

    .. math::

        \psi_A(t_i, t_j, t_k) = \cos \angle t_i t_j t_k = \langle e^{ij}, e^{kj} \rangle,
        \qquad e^{ij} = \frac{t_i - t_j}{\| t_i - t_j \|_2}

        \mathcal{L}_{RKD\text{-}A} = \frac{1}{B^3} \sum_{i, j, k}
            \ell_\delta\big(\psi_A(s_i, s_j, s_k), \psi_A(t_i, t_j, t_k)\big)

    The angle is at the vertex :math:`t_j`. As in the official code, the mean runs over all
    :math:`B^3` ordered triplets: degenerate ones (:math:`i = j` or :math:`k = j`, whose unit
    vector is 0; :math:`i = k`, cosine 1) are equal on both sides and add 0 to the sum. The
    :math:`[B, B, D]` tensor of unit differences costs :math:`O(B^2 D)` memory.

    Args:
        student_emb: ``[B, ...]`` (flattened to ``[B, D_s]``), gradients flow into it.
        teacher_emb: ``[B, ...]`` (flattened to ``[B, D_t]``); detached.

    Returns:
        Scalar loss (0 when ``B < 3``: every triplet is degenerate).
    """
    s, t = _flat_pair("rkd_angle_loss", student_emb, teacher_emb)
    with torch.no_grad():
        t_cos = _vertex_cosines(t)
    return F.smooth_l1_loss(_vertex_cosines(s), t_cos)


def rkd_loss(student_emb: Tensor, teacher_emb: Tensor, *, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    r"""The RKD objective without the task loss:
    :math:`\lambda_D \mathcal{L}_{RKD\text{-}D} + \lambda_A \mathcal{L}_{RKD\text{-}A}`.

    The weights 25 and 50 are RepDistiller's ``RKDLoss(w_d=25, w_a=50)`` and mdistiller's
    ``RKD.DISTANCE_WEIGHT`` / ``ANGLE_WEIGHT`` for CIFAR-100 (the official code's metric-learning
    runs use ``--dist_ratio 1 --angle_ratio 2``). A zero weight skips its term. Inputs as :func:`rkd_distance_loss`.

    Returns:
        Scalar loss.
    """
    problems = [
        f"The '{name}' argument of rkd_loss must be a finite number >= 0. Got {value!r}."
        for name, value in (("distance_weight", distance_weight), ("angle_weight", angle_weight))
        if not (is_finite_number(value) and value >= 0)
    ]
    raise_problems(problems)
    loss = _flat_pair("rkd_loss", student_emb, teacher_emb)[0].sum() * 0.0
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student_emb, teacher_emb)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student_emb, teacher_emb)
    return loss


def _flat_pair(func: str, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both embeddings as ``[B, D]``, in at least fp32, the teacher's detached."""
    problems = [
        f"The '{name}' argument of {func} must have a batch dim and features, shape [B, ...]. Got {tuple(x.shape)}."
        for name, x in (("student_emb", student), ("teacher_emb", teacher))
        if x.ndim < 2
    ]
    if not problems and student.shape[0] != teacher.shape[0]:
        problems.append(
            f"The 'student_emb' and 'teacher_emb' arguments of {func} must have the same batch size. "
            f"Got {student.shape[0]} and {teacher.shape[0]}."
        )
    raise_problems(problems)
    return _upcast(student).flatten(1), _upcast(teacher.detach()).flatten(1)


def _normalised_distances(e: Tensor, eps: float) -> Tensor:
    """``[B, D]`` -> ``[B, B]`` Euclidean distances divided by their off-diagonal mean."""
    squared_norms = e.pow(2).sum(1)
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2 * e @ e.T).clamp_min(eps)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    distances = squared.sqrt() * off_diagonal
    # Every off-diagonal distance is >= sqrt(eps) > 0, so this is the mean over the distinct pairs.
    return distances / (distances.sum() / (len(e) * (len(e) - 1)))


def _vertex_cosines(e: Tensor) -> Tensor:
    """``[B, D]`` -> ``[B, B, B]``: entry ``[j, i, k]`` is the cosine of the angle at ``e_j``."""
    # unit[j, i] = (e_i - e_j) / ||e_i - e_j|| (the zero vector when i == j).
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)
    return torch.einsum("jid,jkd->jik", unit, unit)


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


class RKD(DistillationMethod):
    """Transfer the structure of the teacher's embedding space: the student's pairwise distances
    and triplet angles (each normalised, so the embedding sizes may differ) match the teacher's:

        L = ce_weight * CE(z_s, y) + distance_weight * L_RKD-D + angle_weight * L_RKD-A
            [+ kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))]

    as mdistiller's and RepDistiller's CIFAR-100 runs (CE weight 1, no KD term, -a 0 in
    RepDistiller's script); ``kd_weight > 0`` adds Hinton's KD, the paper's RKD+HKD rows.

    Args:
        teacher_layer, student_layer: module paths of the embeddings (the penultimate layer, the
            input of the classifier's last linear layer, in the references); outputs are
            flattened to [B, D], so D may differ between the two.
        distance_weight, angle_weight: lambda_D and lambda_A (25 and 50 in RepDistiller/mdistiller).
        ce_weight: weight of the label cross-entropy.
        kd_weight, temperature: weight and temperature of the optional KD term (0 disables it).
    """

    family = "classifier"
    paper = "Park, Kim, Lu & Cho 2019, Relational Knowledge Distillation (CVPR 2019, arXiv:1904.05068)"
    # The official metric-learning runs use lambda_D = 1, lambda_A = 2; RepDistiller 25 and 50 (CIFAR-100).
    search_space = {"distance_weight": LogUniform(1.0, 100.0), "angle_weight": LogUniform(2.0, 200.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "classifier.2",
        student_layer: str = "classifier.2",
        distance_weight: NonNegativeFloat = 25.0,
        angle_weight: NonNegativeFloat = 50.0,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.teacher_layer, self.student_layer = teacher_layer, student_layer
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        shapes = [("teacher_layer", self.teacher_layer, teacher_shapes.get(self.teacher_layer))]
        shapes += [("student_layer", self.student_layer, student_shapes.get(self.student_layer))]
        return [
            f"rkd needs a [B, ...] embedding, but {name} '{path}' gives {tuple(shape)}; "
            f"set {name} to a layer with a batch dim and features (e.g. the penultimate layer)."
            for name, path, shape in shapes
            if shape is not None and len(shape) < 2
        ]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        s, t = features[self.student_layer], signal.features[self.teacher_layer]
        size = batch["y"].shape[0]
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"])
        if self.distance_weight > 0:
            distance = rkd_distance_loss(s, t)
            loss = loss + self.distance_weight * distance
            self.log_train("train/rkd_distance", distance, size)
        if self.angle_weight > 0:  # skipped at weight 0: the [B, B, D] unit differences are the costly part
            angle = rkd_angle_loss(s, t)
            loss = loss + self.angle_weight * angle
            self.log_train("train/rkd_angle", angle, size)
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
