"""Softmax regression representation learning, SRD (Yang, Martinez, Bulat & Tzimiropoulos, ICLR 2021)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, tapped_shapes
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.taps import find_module
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def pooled(features: Tensor) -> Tensor:
    """The penultimate feature vector: ``[B, C, H, W]`` maps are averaged over positions (the
    global average pool before a CNN's classifier), ``[B, D]`` vectors pass. Returns ``[B, C]``."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    if features.ndim == 2:
        return features
    raise ValueError(f"srd reads penultimate features [B, C, H, W] or [B, D]. Got {tuple(features.shape)}.")


def srd_feature_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    r"""The feature-matching term :math:`\mathcal{L}_{FM}`: the mean squared difference of the
    penultimate feature vectors (spatial means of conv maps),

    .. math:: \mathcal{L}_{FM} = \frac{1}{B C} \sum_{b, c} \left( \bar h^S_{b,c} - \bar h^T_{b,c} \right)^2

    the official code's ``statm_loss`` (means over positions, then the squared gap averaged over
    channels and the batch).

    Args:
        student_features: the connector's output, ``[B, C, H_S, W_S]`` or ``[B, C]``; gradients flow.
        teacher_features: ``[B, C, H_T, W_T]`` or ``[B, C]``; detached. Spatial sizes may differ.

    Returns:
        Scalar loss.
    """
    h_s, h_t = pooled(_upcast(student_features)), pooled(_upcast(teacher_features.detach()))
    if h_s.shape != h_t.shape:
        raise ValueError(
            "The 'student_features' and 'teacher_features' arguments of srd_feature_loss must pool to the same "
            f"[B, C]. Got {tuple(student_features.shape)} and {tuple(teacher_features.shape)}."
        )
    return (h_s - h_t).pow(2).mean()


def srd_logit_loss(
    head_logits: Tensor, teacher_logits: Tensor, kind: Literal["mse", "kl"] = "mse", temperature: float = 1.0
) -> Tensor:
    r"""The softmax-regression term :math:`\mathcal{L}_{SR}` between the teacher's classifier
    applied to the student's feature, :math:`z^{SC} = W_T \bar h^S + b_T`, and the teacher's logits:

    - ``"mse"`` (the official code, the abstract's "simple L2 loss"):
      :math:`\frac{1}{B K} \sum_{b,k} (z^{SC}_{b,k} - z^T_{b,k})^2`;
    - ``"kl"``: :math:`T^2 \, \mathrm{KL}(\mathrm{softmax}(z^T / T) \,\|\, \mathrm{softmax}(z^{SC} / T))`
      (batch mean), the soft cross-entropy form up to the teacher's constant entropy.

    Args:
        head_logits: :math:`z^{SC}`, ``[B, K]``; gradients flow into it.
        teacher_logits: :math:`z^T`, ``[B, K]``; detached.
        kind: ``"mse"`` or ``"kl"``.
        temperature: :math:`T > 0` of ``"kl"``.

    Returns:
        Scalar loss.
    """
    if head_logits.shape != teacher_logits.shape or head_logits.ndim != 2:
        raise ValueError(
            "The 'head_logits' and 'teacher_logits' arguments of srd_logit_loss must have the same shape [B, K]. "
            f"Got {tuple(head_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if kind == "mse":
        return F.mse_loss(_upcast(head_logits), _upcast(teacher_logits.detach()))
    if kind == "kl":
        return kd_kl(head_logits, teacher_logits.detach(), temperature=temperature)
    raise ValueError(f"The 'kind' argument of srd_logit_loss must be 'mse' or 'kl'. Got {kind!r}.")


def build_connector(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Sequential:
    """The connector r mapping the student's penultimate features onto the teacher's width: a
    bias-free 1x1 convolution, BatchNorm and ReLU for conv maps (the official ``transfer_conv``,
    weights drawn from N(0, 2 / (k^2 C_T))), the same with a linear layer for flat features.

    Raises:
        ValueError: one line when the pair is not two conv maps or two flat features.
    """
    if len(student_shape) == len(teacher_shape) == 4:
        layer, norm = nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False), nn.BatchNorm2d(teacher_shape[1])
    elif len(student_shape) == len(teacher_shape) == 2:
        layer, norm = nn.Linear(student_shape[1], teacher_shape[1], bias=False), nn.BatchNorm1d(teacher_shape[1])
    else:
        raise ValueError(
            f"srd pairs a student output {tuple(student_shape[1:])} with a teacher output {tuple(teacher_shape[1:])}; "
            f"it needs two conv maps [C, H, W] or two flat features [D]: pick the penultimate layers of both."
        )
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / (k^2 C_T))
    return nn.Sequential(layer, norm, nn.ReLU())


class SRD(DistillationMethod):
    """Train the student's penultimate representation with the teacher's frozen classifier: a
    connector r maps the student's feature onto the teacher's width; it should match the teacher's
    feature (L_FM) and, passed through the teacher's final linear layer, give the teacher's logits
    (L_SR):

        L = ce_weight * CE(z_s, y) + feature_weight * L_FM(r(h_s), h_t)
            + sr_weight * L_SR(W_T r(h_s) + b_T, z_t) [+ kd_weight * T^2 KL(z_t || z_s)],

    conv maps being average-pooled over positions before the classifier. Defaults are the
    official code's (KD_SRRL; SRD_ossl ``--distill srd -a 0 -b 1``): both terms weighted 1, L_SR an
    MSE on logits, no KD term.

    Args:
        teacher_layer, student_layer: module paths of the penultimate features: conv maps
            [B, C, H, W] (the last stage, before pooling) or flat [B, D] (the classifier's input).
        teacher_head: module path of the teacher's final ``nn.Linear`` (its classifier), fed the
            student's connected feature.
        feature_weight: weight of L_FM (1).
        sr_weight: weight of L_SR (1).
        sr_loss: ``"mse"`` on logits (official) or ``"kl"`` (T^2-scaled KL at ``temperature``).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term on the student's own
            logits (0: off) and the T of it and of ``sr_loss: kl`` (4).
    """

    family = "classifier"
    paper = "Yang et al. 2021, Knowledge Distillation via Softmax Regression Representation Learning (ICLR 2021)"
    # The official runs weight both terms by 1 (L_FM by 10 for a ShuffleNetV1 student); a decade around.
    search_space = {"feature_weight": LogUniform(0.1, 10.0), "sr_weight": LogUniform(0.1, 10.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "classifier.2",
        student_layer: str = "classifier.2",
        teacher_head: str = "classifier.3",
        feature_weight: NonNegativeFloat = 1.0,
        sr_weight: NonNegativeFloat = 1.0,
        sr_loss: Literal["mse", "kl"] = "mse",
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.teacher_layer, self.student_layer, self.teacher_head = teacher_layer, student_layer, teacher_head
        self.feature_weight, self.sr_weight, self.sr_loss = feature_weight, sr_weight, sr_loss
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.connector: nn.Sequential | None = None

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer, self.teacher_head]  # the head is tapped so that validation finds it

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        student_shape, teacher_shape = student_shapes[self.student_layer], teacher_shapes[self.teacher_layer]
        try:
            build_connector(student_shape, teacher_shape)
        except ValueError as error:
            problems.append(f"{error} (student '{self.student_layer}', teacher '{self.teacher_layer}')")
        head_shape = teacher_shapes[self.teacher_head]
        if len(head_shape) != 2:
            problems.append(
                f"srd's teacher_head '{self.teacher_head}' outputs {tuple(head_shape[1:])}, not logits [K]: "
                f"name the teacher's final linear layer."
            )
        return problems

    def head(self) -> nn.Linear:
        """The teacher's final linear layer (frozen: the teacher's parameters require no grad)."""
        if self.teacher is None:
            raise RuntimeError("srd feeds the student's feature to the teacher's classifier, but no teacher was given.")
        module = find_module(self.teacher.model, self.teacher_head)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"srd's teacher_head '{self.teacher_head}' is a {type(module).__name__}, not an nn.Linear: "
                             f"name the teacher's final linear layer.")
        return module

    def setup(self, stage: str) -> None:
        if self.connector is not None:
            return
        student_shapes, teacher_shapes = tapped_shapes(self, [self.student_layer], [self.teacher_layer])
        teacher_shape = teacher_shapes[self.teacher_layer]
        if self.head().in_features != teacher_shape[1]:
            raise ValueError(
                f"srd's teacher_head '{self.teacher_head}' takes {self.head().in_features} features, but teacher_layer "
                f"'{self.teacher_layer}' gives {teacher_shape[1]}: name the layer that feeds the head."
            )
        self.connector = build_connector(student_shapes[self.student_layer], teacher_shape)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, student_features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        connected = self.connector(student_features[self.student_layer].to(self.connector[0].weight.dtype))
        head = self.head()
        head_logits = F.linear(pooled(connected).to(head.weight.dtype), head.weight, head.bias)
        fm = srd_feature_loss(connected, signal.features[self.teacher_layer])
        sr = srd_logit_loss(head_logits, signal.logits, self.sr_loss, self.temperature)
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.feature_weight * fm + self.sr_weight * sr
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/fm", fm, size)
        self.log_train("train/sr", sr, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
