"""Factor transfer (Kim, Park & Kwak, NeurIPS 2018: "Paraphrasing complex network")."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, tapped_shapes, teacher_signal
from anydistill.core.method import DistillationMethod
from anydistill.core.optim import build_optimizer
from anydistill.core.recipe import Fraction, NonNegativeFloat, NonNegativeInt, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def ft_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    r"""The factor-transfer loss (the paper's Eq. 3 with :math:`p = 1`):

    .. math::

        \mathcal{L}_{FT} = \frac{1}{B D} \sum_{b} \left\| \frac{F_T^{(b)}}{\|F_T^{(b)}\|_2}
            - \frac{F_S^{(b)}}{\|F_S^{(b)}\|_2} \right\|_1

    with :math:`F_T` the paraphraser's factor of the teacher's features and :math:`F_S` the
    translator's factor of the student's, each flattened to :math:`D` values. The mean over the
    :math:`B D` elements is the official code's ``nn.L1Loss()(FT(factor_s), FT(factor_t))`` and
    torchdistill's ``FTLoss(p=1, reduction='mean')``; the paper writes the per-sample norm (a
    factor :math:`D`, absorbed in :math:`\beta`).

    Args:
        student_factor: :math:`F_S`, ``[B, ...]``; gradients flow into it.
        teacher_factor: :math:`F_T`, ``[B, ...]`` with as many values per sample; detached.

    Returns:
        Scalar loss.
    """
    s, t = _upcast(student_factor).flatten(1), _upcast(teacher_factor.detach()).flatten(1)
    if s.shape != t.shape:
        raise ValueError(
            "The 'student_factor' and 'teacher_factor' arguments of ft_loss must hold as many values per sample. "
            f"Got {tuple(student_factor.shape)} and {tuple(teacher_factor.shape)}."
        )
    return F.l1_loss(F.normalize(s, dim=1), F.normalize(t, dim=1))


def reconstruction_loss(reconstructed: Tensor, features: Tensor, kind: str = "l1") -> Tensor:
    r"""The paraphraser's training loss: the element mean of :math:`|x - P(x)|` (``"l1"``, the
    official code's ``nn.L1Loss``) or of :math:`(x - P(x))^2` (``"l2"``, the paper's
    :math:`\|x - P(x)\|^2` up to a constant factor; RepDistiller's ``nn.MSELoss``)."""
    error = _upcast(reconstructed) - _upcast(features.detach())
    return error.abs().mean() if kind == "l1" else error.pow(2).mean()


def _conv_stack(channels: list[int], transposed: bool = False) -> nn.Sequential:
    """3x3 convs (stride 1, padding 1, with bias) between ``channels``, each followed by LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in pairwise(channels):
        layers += [conv(c_in, c_out, kernel_size=3, stride=1, padding=1), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """The teacher-side autoencoder of the official code: encoder C -> C -> kC -> kC (3x3 convs),
    decoder kC -> kC -> C -> C (3x3 transposed convs), a LeakyReLU(0.1) after every layer, no
    BatchNorm. ``encode`` gives the teacher's factor, ``forward`` the reconstruction."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels])
        self.decoder = _conv_stack([factor_channels, factor_channels, channels, channels], transposed=True)

    def encode(self, features: Tensor) -> Tensor:
        return self.encoder(features)

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(self.encoder(features))


def factor_channels(teacher_channels: int, rate: float) -> int:
    """The factor's width, ``round(C_t * rate)`` (at least 1), as the official ``int(round(64 * RATE))``."""
    return max(1, round(teacher_channels * rate))


def pool_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two [B, C, H, W] factors, per dim, to the smaller size (as RepDistiller)."""
    if student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    return tuple(x if x.shape[2:] == size else F.adaptive_avg_pool2d(x, size) for x in (student, teacher))


class FT(DistillationMethod):
    """Two stages. Before the student trains, a paraphraser (a conv autoencoder, factor width
    ``rate * C_t``) learns to reconstruct the teacher's feature map for ``paraphraser_epochs``
    passes over the training data (the recipe's optimizer at its base learning rate); then a
    translator (three 3x3 convs, C_s -> C_s -> rate * C_t -> rate * C_t) maps the student's features
    to a factor that matches the paraphraser's encoding of the teacher's:

        L = ce_weight * CE(z_s, y) + weight * ft_loss(translator(s), paraphraser.encode(t)) [+ kd_weight * T^2 KL].

    The paraphraser's passes come before the ``trainer.max_epochs`` epochs of the student (and are
    not repeated on resume); it stays frozen afterwards. Factors of different spatial sizes are
    average-pooled to the smaller one.

    Args:
        teacher_layer, student_layer: module paths of conv maps [B, C, H, W] (the official code
            taps the last group's output, before the global pooling).
        rate: the paraphrase rate k (0.5).
        paraphraser_epochs: passes of the paraphraser's training (the official ``--epoch 5``).
        reconstruction: the paraphraser's loss, "l1" (the official code) or "l2" (the paper).
        weight: beta of the FT term (500, the official code's ``--beta`` on CIFAR-10).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off) and its T.
    """

    family = "classifier"
    paper = "Kim, Park & Kwak 2018, Paraphrasing Complex Network: Network Compression via Factor Transfer (NeurIPS 2018, arXiv:1802.04977)"
    # Official 500 (CIFAR-10, 2048-value factors), torchdistill 1000 (ImageNet). The element-mean L1 of
    # unit vectors shrinks like 1/sqrt(D), so small factors want a smaller beta: from 1/500 of the official to 10x.
    search_space = {"weight": LogUniform(1.0, 5000.0), "rate": LogUniform(0.25, 1.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layer: str = "features.5",
        student_layer: str = "features.5",
        rate: Fraction = 0.5,
        paraphraser_epochs: NonNegativeInt = 5,
        reconstruction: Literal["l1", "l2"] = "l1",
        weight: NonNegativeFloat = 500.0,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        if rate <= 0:
            raise ValueError(f"ft's rate ({rate}) must be above 0: the factor would have no channel; use 0.5 (the paper).")
        self.teacher_layer, self.student_layer = teacher_layer, student_layer
        self.rate, self.paraphraser_epochs, self.reconstruction = rate, paraphraser_epochs, reconstruction
        self.weight, self.ce_weight, self.kd_weight, self.temperature = weight, ce_weight, kd_weight, temperature
        self.paraphraser: Paraphraser | None = None
        self.translator: nn.Module | None = None
        self.register_buffer("paraphraser_trained", torch.zeros((), dtype=torch.bool))
        self._reconstruction_error: float | None = None

    def teacher_taps(self) -> list[str]:
        return [self.teacher_layer]

    def student_taps(self) -> list[str]:
        return [self.student_layer]

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        shapes = [("teacher_layer", self.teacher_layer, teacher_shapes[self.teacher_layer]),
                  ("student_layer", self.student_layer, student_shapes[self.student_layer])]
        return [f"ft's paraphraser and translator are convolutional, but {name} '{path}' gives {tuple(shape[1:])}; "
                f"set {name} to a layer giving conv maps [C, H, W]" for name, path, shape in shapes if len(shape) != 4]

    def setup(self, stage: str) -> None:
        if self.paraphraser is not None:
            return
        student_shapes, teacher_shapes = tapped_shapes(self, [self.student_layer], [self.teacher_layer])
        problems = self.recipe_problems(teacher_shapes=teacher_shapes, student_shapes=student_shapes, max_epochs=1)
        if problems:
            raise ValueError(problems[0])
        c_s, c_t = student_shapes[self.student_layer][1], teacher_shapes[self.teacher_layer][1]
        width = factor_channels(c_t, self.rate)
        self.paraphraser = Paraphraser(c_t, width)
        self.translator = _conv_stack([c_s, c_s, width, width])

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.paraphraser_epochs > 0 and not bool(self.paraphraser_trained):
            self.train_paraphraser()

    def train_paraphraser(self) -> None:
        """Fit the paraphraser to reconstruct the teacher's tapped features over the training loader."""
        spec = self.optimizer_spec.model_copy(update={"schedule": "constant"})
        optimizer = build_optimizer(spec, self.paraphraser.parameters(), 1)["optimizer"]
        loader = self.trainer.datamodule.train_dataloader()
        self.paraphraser.train()
        total, count = 0.0, 0
        with torch.enable_grad():
            for epoch in range(self.paraphraser_epochs):
                for batch in loader:
                    x = batch["x"].to(self.device)
                    features = teacher_signal(self, {**batch, "x": x}, taps=[self.teacher_layer]).features[self.teacher_layer]
                    features = features.to(self.device)
                    loss = reconstruction_loss(self.paraphraser(features), features, self.reconstruction)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if epoch == self.paraphraser_epochs - 1:
                        total, count = total + loss.item() * len(x), count + len(x)
        self._reconstruction_error = total / max(count, 1)
        self.paraphraser_trained.fill_(True)

    def summary(self) -> dict[str, Any]:
        return {} if self._reconstruction_error is None else {"paraphraser_reconstruction": self._reconstruction_error}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, features = student_and_teacher_features(self, batch, [self.student_layer], [self.teacher_layer])
        with torch.no_grad():
            teacher_factor = self.paraphraser.encode(signal.features[self.teacher_layer])
        student_factor, teacher_factor = pool_to_common_size(self.translator(features[self.student_layer]), teacher_factor)
        ft = ft_loss(student_factor, teacher_factor)
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * ft
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/ft", ft, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
