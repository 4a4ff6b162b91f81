"""Flow of solution procedure (Yim et al., CVPR 2017)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, teacher_signal
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, NonNegativeInt, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    r"""The FSP (flow of solution procedure) matrix between two layers' feature maps:

    .. math::

        G_{ij} = \frac{1}{h w} \sum_{s=1}^{h} \sum_{t=1}^{w} F^{1}_{s,t,i} \, F^{2}_{s,t,j}

    (the paper's Gram matrix across layers). If the spatial sizes differ, the larger map is
    adaptive-*max*-pooled, per dim, to the smaller size first, as torchdistill's ``FSPLoss``
    (RepDistiller average-pools instead; the paper pairs maps of equal size).

    Args:
        first: ``[B, C1, H1, W1]``.
        second: ``[B, C2, H2, W2]``, same batch size.

    Returns:
        ``[B, C1, C2]``.
    """
    if first.ndim != 4 or second.ndim != 4 or first.shape[0] != second.shape[0]:
        raise ValueError(
            "The 'first' and 'second' arguments of fsp_matrix must be feature maps [B, C, H, W] with the same "
            f"batch size. Got {tuple(first.shape)} and {tuple(second.shape)}."
        )
    size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
    first, second = _upcast(first), _upcast(second)
    first = first if first.shape[2:] == size else F.adaptive_max_pool2d(first, size)
    second = second if second.shape[2:] == size else F.adaptive_max_pool2d(second, size)
    return torch.bmm(first.flatten(2), second.flatten(2).transpose(1, 2)) / (size[0] * size[1])


def fsp_loss(student_matrix: Tensor, teacher_matrix: Tensor) -> Tensor:
    r"""The paper's FSP loss for one layer pair (its :math:`\lambda_i` left to the caller):

    .. math::

        \mathcal{L}_{FSP} = \frac{1}{B} \sum_{b=1}^{B} \left\| G_T^{(b)} - G_S^{(b)} \right\|_F^2

    RepDistiller's ``FSP.compute_loss`` takes the element mean instead (this divided by
    :math:`C_1 C_2`); torchdistill's ``FSPLoss`` sums the unsquared L2 norms of the difference's
    columns (``(G_S - G_T).norm(dim=1).sum() / B``).

    Args:
        student_matrix: :math:`G_S`, ``[B, C1, C2]`` (`fsp_matrix`), gradients flow into it.
        teacher_matrix: :math:`G_T`, the same shape; detached.

    Returns:
        Scalar loss.
    """
    if student_matrix.shape != teacher_matrix.shape or student_matrix.ndim != 3:
        raise ValueError(
            "The 'student_matrix' and 'teacher_matrix' arguments of fsp_loss must have the same shape [B, C1, C2]. "
            f"Got {tuple(student_matrix.shape)} and {tuple(teacher_matrix.shape)}."
        )
    diff = _upcast(student_matrix) - _upcast(teacher_matrix.detach())
    return diff.pow(2).sum() / student_matrix.shape[0]


class FSP(DistillationMethod):
    """Two stages, as in the paper. Stage 1 (the first ``fsp_epochs`` epochs) trains the student
    so that its FSP matrices (the flow between consecutive tapped layers) match the teacher's:

        L_1 = weight * sum_i fsp_loss(G_S(i, i+1), G_T(i, i+1)),

    with equal lambda_i. Stage 2 trains the whole student on the task:

        L_2 = ce_weight * CE(z_s, y) [+ kd_weight * T^2 KL].

    RepDistiller does the same (``init()`` with the FSP loss for ``--init_epochs 30``, then
    cross-entropy only, since ``-a 0``). Both networks' FSP matrices must have the same shape, so
    the i-th student layer must have as many channels as the i-th teacher layer (the paper's
    students have the teacher's widths and fewer layers).

    Args:
        teacher_layers, student_layers: module paths (same length, at least 2); each consecutive
            pair of entries gives one FSP matrix. Feature maps [B, C, H, W].
        fsp_epochs: epochs of stage 1 (0 skips it).
        weight: weight of the FSP term in stage 1.
        ce_weight: weight of the label cross-entropy in stage 2 (1).
        kd_weight, temperature: weight of an optional Hinton KD term in stage 2 (0: off) and its T.
    """

    family = "classifier"
    paper = ("Yim et al. 2017, A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and "
             "Transfer Learning (CVPR 2017)")
    # Stage 1 has only the FSP term, so its weight only scales that stage's step size.
    search_space = {"weight": LogUniform(0.1, 10.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        student_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        fsp_epochs: NonNegativeInt = 1,
        weight: NonNegativeFloat = 1.0,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers) or len(teacher_layers) < 2:
            raise ValueError(
                f"fsp pairs layers one to one and needs at least two of each: teacher_layers has {len(teacher_layers)} "
                f"entries and student_layers {len(student_layers)}."
            )
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.fsp_epochs, self.weight = fsp_epochs, weight
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            s_shape, t_shape = student_shapes[s], teacher_shapes[t]
            if len(s_shape) != 4 or len(t_shape) != 4:
                problems.append(
                    f"fsp needs feature maps [C, H, W], but student '{s}' gives {tuple(s_shape[1:])} and teacher '{t}' "
                    f"{tuple(t_shape[1:])}; tap convolutional layers."
                )
            elif s_shape[1] != t_shape[1]:
                problems.append(
                    f"fsp compares FSP matrices, so student '{s}' ({s_shape[1]} channels) must have as many channels as "
                    f"teacher '{t}' ({t_shape[1]}); pair layers of equal width (or give the student the teacher's widths)."
                )
        if self.fsp_epochs >= max_epochs:
            problems.append(
                f"fsp's fsp_epochs ({self.fsp_epochs}) must be below trainer.max_epochs ({max_epochs}): stage 2 "
                f"(training the whole student on the task) would never run."
            )
        return problems

    def flow_matrices(self, features: dict[str, Tensor], layers: list[str]) -> list[Tensor]:
        return [fsp_matrix(features[a], features[b]) for a, b in itertools.pairwise(layers)]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = batch["y"].shape[0]
        if self.current_epoch < self.fsp_epochs:
            signal, _, student_features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
            pairs = zip(self.flow_matrices(student_features, self.student_layers),
                        self.flow_matrices(signal.features, self.teacher_layers))
            fsp = sum(fsp_loss(g_s, g_t) for g_s, g_t in pairs)
            loss = self.weight * fsp
            self.log_train("train/fsp", fsp, size)
        else:
            student_logits = self.student(batch["x"])
            loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"])
            if self.kd_weight > 0:
                soft = kd_kl(student_logits, teacher_signal(self, batch).logits, temperature=self.temperature)
                loss = loss + self.kd_weight * soft
                self.log_train("train/kd", soft, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
