"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, tapped_shapes
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import Fraction, NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


DENSE_SCORES_UP_TO = 16  # N / (K + 1) below which scoring every memory row is cheaper than gathering


def nce_scores(memory: Tensor, anchors: Tensor, contrast_index: Tensor, temperature: float) -> Tensor:
    r"""Unnormalised NCE scores of each anchor against memory rows:

    .. math:: s_{b,k} = \exp\!\left( m_{c_{b,k}}^\top a_b / \tau \right)

    Args:
        memory: ``[N, D]`` embeddings of the *other* network, one row per training row; read only.
        anchors: ``[B, D]`` L2-normalised embeddings; gradients flow into them.
        contrast_index: ``[B, K + 1]`` memory rows, column 0 the anchor's own row (the positive).
        temperature: :math:`\tau > 0` (0.07).

    Returns:
        ``[B, K + 1]``.
    """
    anchors = _upcast(anchors)
    if memory.shape[0] <= DENSE_SCORES_UP_TO * contrast_index.shape[1]:
        # Every row's score by one matmul, then the K + 1 wanted: on a CPU ~20x faster than
        # gathering a [B, K + 1, D] copy of the memory whenever N is within a few multiples of K.
        logits = torch.gather(anchors @ memory.detach().to(anchors.dtype, copy=True).T, 1, contrast_index)  # a copy: the memory is updated in place before backward
    else:
        rows = memory.detach()[contrast_index]  # [B, K + 1, D]
        logits = torch.bmm(rows.to(anchors.dtype), anchors.unsqueeze(2)).squeeze(2)
    return torch.exp(logits / temperature)


def nce_loss(probs: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    r"""The NCE loss of CRD (the paper's Eq. 18, RepDistiller's ``ContrastLoss``): with
    :math:`K` noise samples from a uniform noise distribution :math:`P_n = 1 / N`,

    .. math::

        \mathcal{L} = -\frac{1}{B} \sum_{b} \left[ \log \frac{P_{b,0}}{P_{b,0} + K P_n + \epsilon}
            + \sum_{k=1}^{K} \log \frac{K P_n}{P_{b,k} + K P_n + \epsilon} \right]

    Args:
        probs: ``[B, K + 1]`` normalised scores :math:`P = s / Z`, column 0 the positive.
        num_data: :math:`N`, the training-set size (the memory's rows).
        eps: :math:`\epsilon` (1e-7).

    Returns:
        Scalar loss.
    """
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"The 'probs' argument of nce_loss must have shape [B, K + 1] with K >= 1. Got {tuple(probs.shape)}.")
    noise = (probs.shape[1] - 1) / num_data  # K * P_n
    positive = torch.log(probs[:, 0] / (probs[:, 0] + noise + eps))
    negatives = torch.log(noise / (probs[:, 1:] + noise + eps))
    return -(positive.sum() + negatives.sum()) / probs.shape[0]


def momentum_update(memory: Tensor, index: Tensor, embeddings: Tensor, momentum: float) -> None:
    r"""Move memory rows towards new embeddings and renormalise, in place:
    :math:`m_i \leftarrow \mathrm{normalize}(\mu\, m_i + (1 - \mu)\, v_i)`."""
    with torch.no_grad():
        rows = memory[index] * momentum + embeddings.detach().to(memory.dtype) * (1 - momentum)
        memory.index_copy_(0, index, F.normalize(rows, dim=1, eps=0.0))


def sample_negatives(labels: Tensor, batch_labels: Tensor, k: int) -> Tensor:
    """``[B, k]`` training-row indices, for each batch row drawn uniformly from the rows of the
    *other* classes, without replacement unless they are fewer than ``k`` (RepDistiller's and
    mdistiller's ``mode='exact'`` sampler, ``CIFAR100InstanceSample``)."""
    out = torch.empty(batch_labels.shape[0], k, dtype=torch.long, device=labels.device)
    for label in batch_labels.unique().tolist():
        rows = (batch_labels == label).nonzero().squeeze(1)
        pool = (labels != label).nonzero().squeeze(1)
        weights = torch.ones(len(rows), len(pool), device=labels.device)
        out[rows] = pool[torch.multinomial(weights, k, replacement=k > len(pool))]
    return out


class ContrastMemory(nn.Module):
    """CRD's memory bank: one embedding per training row for each network (buffers, so they are
    checkpointed and never optimised), initialised uniformly in +-1/sqrt(D/3), and the two
    normalising constants Z (set from the first batch, then fixed; -1 until then)."""

    def __init__(self, num_data: int, dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student", torch.rand(num_data, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("teacher", torch.rand(num_data, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("normalizers", torch.full((2,), -1.0))

    def forward(self, student_embed: Tensor, teacher_embed: Tensor, contrast_index: Tensor,
                temperature: float, momentum: float) -> tuple[Tensor, Tensor]:
        """The normalised scores of the student anchors against the teacher memory and of the
        teacher anchors against the student memory (``[B, K + 1]`` each); then the positives'
        memory rows are updated with momentum."""
        num_data = self.student.shape[0]
        scores_s = nce_scores(self.teacher, student_embed, contrast_index, temperature)
        scores_t = nce_scores(self.student, teacher_embed, contrast_index, temperature)
        # Z ~ N * E[s] from the first batch (a Monte-Carlo estimate of the partition function).
        first = torch.stack([scores_s.detach().mean(), scores_t.detach().mean()]) * num_data
        self.normalizers.copy_(torch.where(self.normalizers < 0, first, self.normalizers))
        positives = contrast_index[:, 0]
        momentum_update(self.student, positives, student_embed, momentum)
        momentum_update(self.teacher, positives, teacher_embed, momentum)
        return scores_s / self.normalizers[0], scores_t / self.normalizers[1]


def training_labels(datamodule: Any) -> Tensor | None:
    """The labels of the rows the training loader serves (whose ``index`` the batches carry), or
    None when the data module does not expose them."""
    rows = getattr(datamodule, "training_rows", None)
    if callable(rows):
        return rows()[1]
    split = getattr(datamodule, "split", None)
    return split("train")[1] if callable(split) else None


class CRD(DistillationMethod):
    """Maximise a lower bound on the mutual information between teacher and student
    representations by noise-contrastive estimation: linear heads embed the penultimate features
    of both networks into L2-normalised ``embed_dim``-d vectors; each sample's embedding is
    contrasted with the other network's memory-bank embedding of the same training row (the
    positive) and of ``num_negatives`` rows of other classes (the negatives), both ways:

        L = ce_weight * CE(z_s, y) + weight * (nce(P_s) + nce(P_t)) [+ kd_weight * T^2 KL],

    with RepDistiller's defaults (``--distill crd -a 0 -b 0.8``; ``-a 1`` for CRD+KD) and
    mdistiller's (CE 1, CRD 0.8). Batches must carry each row's ``index`` in the training set.

    Args:
        teacher_layer, student_layer: module paths of the penultimate features (flattened).
        embed_dim: width of the embeddings (128).
        num_negatives: K, negatives per sample (16384; below the training-set size).
        nce_temperature: tau of the scores (0.07).
        momentum: of the memory updates (0.5).
        weight: weight of the CRD term (0.8).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off) and its T.
    """

    family = "classifier"
    paper = "Tian, Krishnan & Isola 2020, Contrastive Representation Distillation (ICLR 2020, arXiv:1910.10699)"
    # The paper ablates tau from 0.02 to 0.3 (and K from 16 to 16384, left out here: a K at or above a
    # small training set's size is refused); its code weights CRD by 0.8.
    search_space = {"nce_temperature": LogUniform(0.02, 0.3), "weight": LogUniform(0.1, 5.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "classifier.2",
        student_layer: str = "classifier.2",
        embed_dim: PositiveInt = 128,
        num_negatives: PositiveInt = 16384,
        nce_temperature: PositiveFloat = 0.07,
        momentum: Fraction = 0.5,
        weight: NonNegativeFloat = 0.8,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.teacher_layer, self.student_layer, self.embed_dim = teacher_layer, student_layer, embed_dim
        self.num_negatives, self.nce_temperature, self.momentum = num_negatives, nce_temperature, momentum
        self.weight, self.ce_weight = weight, ce_weight
        self.kd_weight, self.temperature = kd_weight, temperature
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None
        self.memory: ContrastMemory | None = None
        self.labels: Tensor | None = None  # of the training rows, for drawing negatives (not model state)

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def data_problems(self, datamodule: Any, teacher: nn.Module | None) -> list[str]:
        labels = training_labels(datamodule)
        if labels is None:
            return [(f"crd needs the training labels and each training row's 'index' in its batches, which "
                     f"{type(datamodule).__name__} does not provide; use a data module built on TensorClassificationData.")]
        problems = []
        if self.num_negatives >= len(labels):
            problems.append(
                f"crd's num_negatives ({self.num_negatives}) must be below the training-set size ({len(labels)}): "
                f"set num_negatives below {len(labels)}."
            )
        if labels[labels >= 0].unique().numel() < 2:
            problems.append("crd draws its negatives from the other classes, but the training rows hold one class; give data with two or more.")
        return problems

    def setup(self, stage: str) -> None:
        labels = training_labels(self.trainer.datamodule)
        if labels is None or self.memory is None:  # validation already refused these; a direct fit may not have
            problems = self.data_problems(self.trainer.datamodule, None)
            if problems:
                raise ValueError(problems[0])
        self.labels = labels.clone()
        if self.memory is not None:
            return
        student_shapes, teacher_shapes = tapped_shapes(self, [self.student_layer], [self.teacher_layer])
        self.embed_s = nn.Linear(student_shapes[self.student_layer][1:].numel(), self.embed_dim)
        self.embed_t = nn.Linear(teacher_shapes[self.teacher_layer][1:].numel(), self.embed_dim)
        self.memory = ContrastMemory(len(labels), self.embed_dim)

    def embed(self, head: nn.Linear, features: Tensor) -> Tensor:
        return F.normalize(head(features.flatten(1).to(head.weight.dtype)), dim=1, eps=0.0)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if "index" not in batch:
            raise RuntimeError("crd needs each training row's dataset index in its batches ('index'); the data module gives none.")
        signal, student_logits, student_features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        index = batch["index"].to(self.memory.student.device)
        self.labels = self.labels.to(index.device)
        negatives = sample_negatives(self.labels, self.labels[index], self.num_negatives)
        contrast_index = torch.cat([index.unsqueeze(1), negatives], dim=1)
        probs_s, probs_t = self.memory(
            self.embed(self.embed_s, student_features[self.student_layer]),
            self.embed(self.embed_t, signal.features[self.teacher_layer].detach()),
            contrast_index, self.nce_temperature, self.momentum,
        )
        num_data = self.memory.student.shape[0]
        crd = nce_loss(probs_s, num_data) + nce_loss(probs_t, num_data)
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * crd
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/crd", crd, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
