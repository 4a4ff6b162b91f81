"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features
from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher


def cosine_kernel_probabilities(emb: Tensor, *, eps: float = 1e-7) -> Tensor:
    r"""PKT's conditional probabilities of a batch of embeddings under the cosine kernel.

    .. math::

        K(x_i, x_j) = \tfrac{1}{2} \left( \frac{x_i^\top x_j}{\|x_i\| \, \|x_j\|} + 1 \right)
            \in [0, 1], \qquad
        p_{j|i} = \frac{K(x_i, x_j)}{\sum_{k} K(x_i, x_k)}

    Each row is normalised as :math:`x / (\|x\| + \epsilon)` (so a zero embedding has cosine 0
    with everything, kernel 1/2), as in the authors' code. The sum over :math:`k` includes
    :math:`k = i` (:math:`K = 1`), as in the authors' code; the paper's definition excludes it.

    Args:
        emb: ``[B, ...]``, flattened to ``[B, D]``.
        eps: added to the norms.

    Returns:
        ``[B, B]``, each row summing to 1 (row :math:`i` is :math:`p_{\cdot|i}`).
    """
    flat = emb.flatten(1)
    unit = flat / (flat.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student_emb: Tensor, teacher_emb: Tensor, *, eps: float = 1e-7) -> Tensor:
    r"""PKT loss: the divergence between the teacher's and the student's
    cosine-kernel conditional probabilities (:func:`cosine_kernel_probabilities`).

    .. math::

        \mathcal{L}_{PKT} = \frac{1}{B^2} \sum_{i, j} p_{j|i}
            \log \frac{p_{j|i} + \epsilon}{q_{j|i} + \epsilon}

    with :math:`p` the teacher's and :math:`q` the student's probabilities. The paper sums
    :math:`p \log(p / q)` over the pairs :math:`i \ne j`; the authors' code
    (``cosine_similarity_loss`` in passalis/probabilistic_kt), RepDistiller, mdistiller and
    torchdistill keep the diagonal and take the mean over the :math:`B^2` entries, with
    :math:`\epsilon` inside the logarithm; so does this (the 1/B^2 is why the usual weight is 3e4).

    Args:
        student_emb: ``[B, ...]`` (flattened to ``[B, D_s]``), gradients flow into it.
        teacher_emb: ``[B, ...]`` (flattened to ``[B, D_t]``; ``D_t`` may differ); detached.
        eps: added to the norms and inside the logarithm (1e-7 in every reference).

    Returns:
        Scalar loss (0 for ``B = 1``: both rows are [1]).
    """
    problems = [
        f"The '{name}' argument of pkt_loss must have a batch dim and features, shape [B, ...]. Got {tuple(x.shape)}."
        for name, x in (("student_emb", student_emb), ("teacher_emb", teacher_emb))
        if x.ndim < 2
    ]
    if not problems and student_emb.shape[0] != teacher_emb.shape[0]:
        problems.append(
            "The 'student_emb' and 'teacher_emb' arguments of pkt_loss must have the same batch size. "
            f"Got {student_emb.shape[0]} and {teacher_emb.shape[0]}."
        )
    if not (is_finite_number(eps) and eps > 0):
        problems.append(f"The 'eps' argument of pkt_loss must be a finite number > 0. Got {eps!r}.")
    raise_problems(problems)
    q = cosine_kernel_probabilities(_upcast(student_emb), eps=eps)
    p = cosine_kernel_probabilities(_upcast(teacher_emb.detach()), eps=eps)
    return (p * (torch.log(p + eps) - torch.log(q + eps))).mean()


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


class PKT(DistillationMethod):
    """Match the probability distribution of the teacher's embedding space: the conditional
    probabilities that a sample picks each other sample as its neighbour, under a cosine kernel,
    added to the label loss:

        L = ce_weight * CE(z_s, y) + weight * L_PKT

    as RepDistiller (``-b 30000``) and mdistiller (``PKT.LOSS.FEAT_WEIGHT = 30000``) on CIFAR-100.

    Args:
        teacher_layer, student_layer: module paths of the embeddings (the penultimate layer in the
            references); outputs are flattened to [B, D], so D may differ between the two.
        weight: weight of the PKT term (3e4 in RepDistiller/mdistiller; it compensates the mean
            over B^2 entries).
        ce_weight: weight of the label cross-entropy.
    """

    family = "classifier"
    paper = (
        "Passalis & Tefas 2018, Learning Deep Representations with Probabilistic Knowledge Transfer "
        "(ECCV 2018, arXiv:1803.10837)"
    )
    # The paper transfers with the PKT loss alone; RepDistiller's CIFAR-100 weight is 3e4.
    search_space = {"weight": LogUniform(1e3, 1e5)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "classifier.2",
        student_layer: str = "classifier.2",
        weight: NonNegativeFloat = 30000.0,
        ce_weight: NonNegativeFloat = 1.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.teacher_layer, self.student_layer = teacher_layer, student_layer
        self.weight, self.ce_weight = weight, ce_weight

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        shapes = [("teacher_layer", self.teacher_layer, teacher_shapes.get(self.teacher_layer))]
        shapes += [("student_layer", self.student_layer, student_shapes.get(self.student_layer))]
        return [
            f"pkt needs a [B, ...] embedding, but {name} '{path}' gives {tuple(shape)}; "
            f"set {name} to a layer with a batch dim and features (e.g. the penultimate layer)."
            for name, path, shape in shapes
            if shape is not None and len(shape) < 2
        ]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        pkt = pkt_loss(features[self.student_layer], signal.features[self.teacher_layer])
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * pkt
        size = batch["y"].shape[0]
        self.log_train("train/pkt", pkt, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
