"""Inter-channel correlation knowledge distillation, ICKD-C (Liu et al., ICCV 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, tapped_shapes
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def channel_correlation(features: Tensor) -> Tensor:
    r"""The inter-channel correlation (Gram) matrix of each sample, each row L2-normalised:

    .. math:: G_{b} = \mathrm{rownorm}\!\left( F_b F_b^\top \right), \qquad F_b \in \mathbb{R}^{C \times HW}

    where :math:`F_b` is sample :math:`b`'s map with its positions flattened, so
    :math:`(F_b F_b^\top)_{mn}` is the inner product of channels :math:`m` and :math:`n`; every
    row :math:`m` is then divided by its L2 norm, as the official code does.

    Args:
        features: ``[B, C, H, W]``.

    Returns:
        ``[B, C, C]``.
    """
    if features.ndim != 4:
        raise ValueError(f"The 'features' argument of channel_correlation must have shape [B, C, H, W]. Got {tuple(features.shape)}.")
    flat = _upcast(features).flatten(2)  # [B, C, HW]
    return F.normalize(torch.bmm(flat, flat.transpose(1, 2)), dim=2)


def ickd_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    r"""ICKD-C's loss between the student's embedded map and the teacher's map:

    .. math::

        \mathcal{L}_{ICKD} = \frac{1}{C B} \sum_{b=1}^{B} \sum_{m,n=1}^{C}
            \left( G^S_{b,mn} - G^T_{b,mn} \right)^2

    with :math:`G` from `channel_correlation`; the :math:`1 / (C B)` normalisation is the official
    CIFAR-100 code's (``Cifar100/distiller_zoo/ICKD.py``), whose loss weight 2.5 assumes it.

    Args:
        student_features: ``[B, C, H_S, W_S]``, the student's map after the 1x1 embedding (same
            channel count as the teacher's); gradients flow into it.
        teacher_features: ``[B, C, H_T, W_T]``; detached. The spatial sizes may differ (the
            correlation matrix is C x C whatever they are).

    Returns:
        Scalar loss.
    """
    for name, value in (("student_features", student_features), ("teacher_features", teacher_features)):
        if value.ndim != 4:
            raise ValueError(f"The '{name}' argument of ickd_loss must have shape [B, C, H, W]. Got {tuple(value.shape)}.")
    if student_features.shape[:2] != teacher_features.shape[:2]:
        raise ValueError(
            "The 'student_features' and 'teacher_features' arguments of ickd_loss must have the same batch size and "
            f"channel count. Got {tuple(student_features.shape)} and {tuple(teacher_features.shape)}."
        )
    batch, channels = student_features.shape[:2]
    diff = channel_correlation(student_features) - channel_correlation(teacher_features.detach())
    return diff.pow(2).sum() / (channels * batch)


def build_ickd_embed(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Sequential:
    """The student-side embedding: a bias-free 1x1 convolution C_S -> C_T and a BatchNorm, as the
    official ``Embed``.

    Raises:
        ValueError: one line when either output is not a conv map [C, H, W].
    """
    if len(student_shape) != 4 or len(teacher_shape) != 4:
        raise ValueError(
            f"ickd correlates the channels of conv maps [C, H, W], but got a student output {tuple(student_shape[1:])} "
            f"and a teacher output {tuple(teacher_shape[1:])}: pick conv layers (e.g. the last conv stage)."
        )
    return nn.Sequential(nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False), nn.BatchNorm2d(teacher_shape[1]))


class ICKD(DistillationMethod):
    """Make the student's inter-channel correlations mimic the teacher's: a 1x1 convolution and a
    BatchNorm embed the student's last-stage map into the teacher's channel count, and the
    row-normalised channel Gram matrices of the two maps are matched (ICKD-C, the CIFAR variant):

        L = ce_weight * CE(z_s, y) + weight * ickd_loss(embed(f_s), f_t) [+ kd_weight * T^2 KL],

    with the official CIFAR-100 settings (``--distill ickd -a 0 -b 2.5``; ``-a 1`` adds KD).

    Args:
        teacher_layer, student_layer: module paths of conv maps [B, C, H, W] (the official code
            takes the last conv stage, before pooling).
        weight: weight of the ICKD term (2.5).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off; the official
            "ICKD-C" row with KL uses 1) and its T (4).
    """

    family = "classifier"
    paper = ("Liu et al. 2021, Exploring Inter-Channel Correlation for Diversity-preserved Knowledge Distillation "
             "(ICCV 2021, arXiv:2202.03680)")
    # The official CIFAR-100 runs weight ICKD by 2.5; this brackets it by about 5x either way.
    search_space = {"weight": LogUniform(0.5, 12.5)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "features.5",
        student_layer: str = "features.5",
        weight: NonNegativeFloat = 2.5,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.teacher_layer, self.student_layer = teacher_layer, student_layer
        self.weight, self.ce_weight = weight, ce_weight
        self.kd_weight, self.temperature = kd_weight, temperature
        self.embed: nn.Sequential | None = None

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        try:
            build_ickd_embed(student_shapes[self.student_layer], teacher_shapes[self.teacher_layer])
        except ValueError as error:
            return [f"{error} (student '{self.student_layer}', teacher '{self.teacher_layer}')"]
        return []

    def setup(self, stage: str) -> None:
        if self.embed is not None:
            return
        student_shapes, teacher_shapes = tapped_shapes(self, [self.student_layer], [self.teacher_layer])
        self.embed = build_ickd_embed(student_shapes[self.student_layer], teacher_shapes[self.teacher_layer])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, student_features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        f_s = student_features[self.student_layer]
        ickd = ickd_loss(self.embed(f_s.to(self.embed[0].weight.dtype)), signal.features[self.teacher_layer])
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * ickd
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/ickd", ickd, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
