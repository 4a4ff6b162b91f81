"""Distillation of activation boundaries (Heo, Lee, Yun & Choi, AAAI 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, teacher_signal
from anydistill.classifier.preactivation import build_connector, preactivation_problems, probe_outputs
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, NonNegativeInt, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def ab_loss(student_preact: Tensor, teacher_preact: Tensor, margin: float = 1.0) -> Tensor:
    r"""The activation-boundary loss for one layer pair: a hinge-like squared loss that pushes each
    student response (after the connector) to the side of 0 where the teacher's neuron is, by at
    least the margin :math:`\mu`:

    .. math::

        \mathcal{L}_{AB} = \frac{1}{B} \sum_{b, c, h, w} \Big[
            \rho(t) \, \sigma(\mu - s)^2 + (1 - \rho(t)) \, \sigma(\mu + s)^2 \Big]

    with :math:`\rho(t) = 1[t > 0]` the teacher neuron's activation and :math:`\sigma` the ReLU,
    i.e. :math:`(s - \mu)^2` where the teacher is active and :math:`s < \mu`,
    :math:`(s + \mu)^2` where it is not and :math:`s > -\mu`, 0 elsewhere: the paper's Eq. (5)
    summed over elements and divided by the batch size, as the official code
    (``criterion_alternative_L2``), RepDistiller's ``ABLoss`` and torchdistill's
    ``AltActTransferLoss`` (whose boundary cases, ``s = +-mu``, are followed).

    Args:
        student_preact: :math:`s = r(S(x))`, the connector's output: ``[B, C, H, W]`` or ``[B, D]``;
            gradients flow into it.
        teacher_preact: :math:`t = T(x)`, the teacher's pre-ReLU responses, the same shape; detached.
        margin: :math:`\mu \ge 0` (1 in the official code).

    Returns:
        Scalar loss.
    """
    if student_preact.shape != teacher_preact.shape or student_preact.ndim < 2:
        raise ValueError(
            "The 'student_preact' and 'teacher_preact' arguments of ab_loss must have the same shape [B, ...]. "
            f"Got {tuple(student_preact.shape)} and {tuple(teacher_preact.shape)}."
        )
    s, active = _upcast(student_preact), teacher_preact.detach() > 0
    loss = (s + margin).pow(2) * ((s > -margin) & ~active) + (s - margin).pow(2) * ((s <= margin) & active)
    return loss.sum() / s.shape[0]


def ab_layer_weights(num_pairs: int) -> list[float]:
    """The official per-pair weights, deepest pair 1 and each shallower one half the next:
    ``[2^-(n-1), ..., 1/4, 1/2, 1]``."""
    return [2.0 ** (i - num_pairs + 1) for i in range(num_pairs)]


def boundary_agreement(student_preact: Tensor, teacher_preact: Tensor) -> Tensor:
    """The share of neurons on the same side of 0 in both nets (the official code's "activation similarity")."""
    return ((student_preact > 0) == (teacher_preact > 0)).float().mean()


class AB(DistillationMethod):
    """Two stages. Stage 1 (the first ``init_epochs`` epochs) trains the student up to its tapped
    layers, plus one connector r per pair (1x1 conv + BN), so that its neurons switch on and off
    where the teacher's do:

        L_1 = weight * sum_pairs w_i * ab_loss(r(s_i), t_i, margin),  w_i = 1, 1/2, 1/4... from the deepest

    (the official code's ``loss_alter / 1000 * 3``: weight 3e-3). Stage 2 trains the whole student
    on the labels, optionally with Hinton KD:

        L_2 = ce_weight * CE(z_s, y) [+ kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))].

    The tapped outputs must be *pre-ReLU* responses on both sides (small-cnn: the convs
    ``features.0``, ``features.3``, or the head's linear ``classifier.1``); a layer that gives no
    negative value on the training rows is refused when training starts.

    Args:
        teacher_layers, student_layers: paired module paths (same length), each pair two conv maps of
            the same height and width, or two flat features.
        margin: mu of ab_loss (1).
        weight: scale of the stage-1 loss (3e-3, the official code's 3 / 1000).
        init_epochs: epochs of stage 1 (0 skips it).
        ce_weight: weight of the stage-2 label cross-entropy (1).
        kd_weight, temperature: weight of an optional stage-2 Hinton KD term (0: off) and its T.
    """

    family = "classifier"
    paper = "Heo, Lee, Yun & Choi 2019, Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons (AAAI 2019, arXiv:1811.03233)"
    # The official code uses mu = 1 and scales stage 1 by 3e-3 (with SGD; Adam is nearly invariant to it).
    search_space = {"margin": LogUniform(0.25, 4.0), "weight": LogUniform(3e-4, 3e-2)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.0", "features.3"],  # noqa: B006
        student_layers: list[str] = ["features.0", "features.3"],  # noqa: B006
        margin: NonNegativeFloat = 1.0,
        weight: PositiveFloat = 3e-3,
        init_epochs: NonNegativeInt = 1,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 3.0,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers) or not teacher_layers:
            raise ValueError(
                f"ab pairs layers one to one: teacher_layers has {len(teacher_layers)} entries and student_layers "
                f"{len(student_layers)}; give both the same number (at least one)."
            )
        if ce_weight == 0 and kd_weight == 0:
            raise ValueError("ab's stage 2 needs a loss: ce_weight and kd_weight are both 0; set one above 0.")
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.margin, self.weight, self.init_epochs = margin, weight, init_epochs
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.connectors: nn.ModuleList | None = None

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            problem = _pair_problem(student_shapes[s], teacher_shapes[t])
            if problem:
                problems.append(f"{problem} (student '{s}', teacher '{t}')")
        if self.init_epochs >= max_epochs:
            problems.append(
                f"ab's init_epochs ({self.init_epochs}) must be below trainer.max_epochs ({max_epochs}): "
                f"stage 2 (training the whole student on the labels) would never run."
            )
        return problems

    def setup(self, stage: str) -> None:
        if self.connectors is not None:
            return
        student_out, teacher_out = probe_outputs(self, self.student_layers, self.teacher_layers)
        problems = [p for s, t in zip(self.student_layers, self.teacher_layers)
                    if (p := _pair_problem(student_out[s].shape, teacher_out[t].shape))]
        problems += preactivation_problems("ab", "teacher", teacher_out) + preactivation_problems("ab", "student", student_out)
        if problems:
            raise ValueError(problems[0])
        self.connectors = nn.ModuleList(
            build_connector(student_out[s].shape, teacher_out[t].shape, identity_if_same_width=True)
            for s, t in zip(self.student_layers, self.teacher_layers)
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = batch["y"].shape[0]
        if self.current_epoch < self.init_epochs:
            signal, _, features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
            ab, agreement = 0.0, 0.0
            pairs = zip(self.connectors, self.student_layers, self.teacher_layers, ab_layer_weights(len(self.connectors)))
            for connector, s, t, w in pairs:
                connected, target = connector(features[s]), signal.features[t]
                ab = ab + w * ab_loss(connected, target, self.margin)
                agreement = agreement + boundary_agreement(connected.detach(), target) / len(self.connectors)
            loss = self.weight * ab
            self.log_train("train/ab", ab, size)
            self.log_train("train/boundary_agreement", agreement, size)
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


def _pair_problem(student_shape: torch.Size, teacher_shape: torch.Size) -> str | None:
    """Why a pair cannot be compared neuron by neuron, or None."""
    if len(student_shape) != len(teacher_shape) or len(student_shape) not in (2, 4):
        return (f"ab cannot pair a student output {tuple(student_shape[1:])} with a teacher output "
                f"{tuple(teacher_shape[1:])}; pick two conv maps [C, H, W] or two flat features [D]")
    if len(student_shape) == 4 and student_shape[2:] != teacher_shape[2:]:
        return (f"ab compares neurons position by position, but the student map {tuple(student_shape[1:])} and the "
                f"teacher map {tuple(teacher_shape[1:])} differ in height or width; pick layers of the same spatial size")
    return None


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
