"""Knowledge review: attention-based fusion and the hierarchical context loss (Chen et al., CVPR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, tapped_shapes
from anydistill.classifier.methods.dkd import DKD
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import Fraction, NonNegativeFloat, OptimizerSpec, PositiveInt
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher


def hcl_loss(student_features: Tensor, teacher_features: Tensor, levels: tuple[int, ...] = (4, 2, 1)) -> Tensor:
    r"""The hierarchical context loss of one stage: the MSE of the full maps plus the MSEs of
    their average-pooled :math:`l \times l` pyramids, each level weighted half the previous one,
    normalised by the total weight:

    .. math::

        \mathcal{L}_{HCL} = \frac{\mathrm{MSE}(F^S, F^T) + \sum_{j} 2^{-j}\,
            \mathrm{MSE}(\mathrm{pool}_{l_j}(F^S), \mathrm{pool}_{l_j}(F^T))}{1 + \sum_j 2^{-j}}

    where :math:`l_1, l_2, \ldots` are the ``levels`` smaller than the map's height (the others
    are skipped, as the official code, mdistiller and torchdistill do), and MSE is the element mean.

    Args:
        student_features: ``[B, C, H, W]``, the ABF output for this stage; gradients flow into it.
        teacher_features: ``[B, C, H, W]``, the same shape; detached.
        levels: pyramid sizes, largest first (4, 2, 1).

    Returns:
        Scalar loss.
    """
    if student_features.shape != teacher_features.shape or student_features.ndim != 4:
        raise ValueError(
            "The 'student_features' and 'teacher_features' arguments of hcl_loss must have the same shape [B, C, H, W]. "
            f"Got {tuple(student_features.shape)} and {tuple(teacher_features.shape)}."
        )
    f_s, f_t = _upcast(student_features), _upcast(teacher_features.detach())
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    for level in levels:
        if level >= f_s.shape[2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, level), F.adaptive_avg_pool2d(f_t, level))
        total += weight
    return loss / total


class ABF(nn.Module):
    """Attention-based fusion of one student stage with the fused features of the deeper stages.

    ``conv1`` (1x1, bias-free, BatchNorm) maps the stage to ``mid_channels``; unless this is the
    deepest stage, the deeper residual is resized (nearest) to the stage's size and the two are
    mixed with two sigmoid attention maps from a 1x1 convolution of their concatenation; the
    result, resized (nearest) to the teacher's spatial size, is the residual passed on, and
    ``conv2`` (3x3, bias-free, BatchNorm) maps it to the teacher's channels.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``x`` [B, C_in, H, W] and the deeper ``residual`` [B, mid, H', W'] (None for the deepest
        stage) -> (output [B, C_out, *out_size], new residual [B, mid, *out_size])."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))  # [B, 2, H, W]
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def as_map(features: Tensor) -> Tensor:
    """Flat features ``[B, D]`` (a pooled penultimate vector) as ``[B, D, 1, 1]`` maps; maps pass."""
    return features[:, :, None, None] if features.ndim == 2 else features


def review(abfs: nn.ModuleList, student_features: list[Tensor], out_sizes: list[tuple[int, int]]) -> list[Tensor]:
    """Run the ABFs from the deepest stage to the shallowest.

    Args:
        abfs: one `ABF` per stage, shallowest first (the last one does not fuse).
        student_features: the stages' maps ``[B, C_i, H_i, W_i]``, shallowest first.
        out_sizes: the teacher's spatial size per stage, shallowest first.

    Returns:
        The fused outputs per stage, shallowest first, each of the teacher stage's shape.
    """
    outputs, residual = [], None
    for abf, features, size in zip(reversed(abfs), reversed(student_features), reversed(out_sizes)):
        out, residual = abf(features, residual, size)
        outputs.insert(0, out)
    return outputs


def build_abfs(student_shapes: list[torch.Size], teacher_shapes: list[torch.Size], max_mid_channels: int) -> nn.ModuleList:
    """One `ABF` per stage (shallowest first), mid width min(max_mid_channels, C of the deepest
    student stage) as the official code.

    Raises:
        ValueError: one line per stage that is not a conv map or a flat vector.
    """
    for i, shape in enumerate([*student_shapes, *teacher_shapes]):
        if len(shape) not in (2, 4):
            side = "student" if i < len(student_shapes) else "teacher"
            raise ValueError(f"reviewkd reads conv maps [C, H, W] or flat features [D], but a {side} layer gives "
                             f"{tuple(shape[1:])}: pick stage outputs or the pooled penultimate features.")
    mid = min(max_mid_channels, student_shapes[-1][1])
    last = len(student_shapes) - 1
    return nn.ModuleList(ABF(s[1], mid, t[1], fuse=i < last) for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes)))


class ReviewKD(DistillationMethod):
    """Knowledge review: the student's stages are fused from the deepest to the shallowest by
    attention-based fusion (ABF), so that each shallow stage is supervised with the teacher's
    matching stage through features that have "reviewed" the deeper ones, with the hierarchical
    context loss (HCL) at every stage:

        L = ce_weight * CE(z_s, y) + w * weight * sum_stages hcl_loss(ABF_i, t_i),
        w = min(progress / warmup, 1),

    the warm-up as DKD's (`DKD.warmup_weight`). Flat features (a pooled penultimate vector)
    count as 1x1 maps; a student stage's output is resized (nearest) to the teacher stage's size.

    Args:
        teacher_layers, student_layers: paired module paths, shallowest first (the official code
            takes every stage output plus the pooled feature).
        weight: weight of the review term (1, the official default; its CIFAR-100 scripts use
            0.6 to 8 per pair, mdistiller 5 for ResNet32x4 -> ResNet8x4).
        ce_weight: weight of the label cross-entropy (1).
        max_mid_channels: cap of the ABFs' mid width (512).
        warmup: the share of the schedule over which w ramps to 1, step by step (20 of 240 epochs).
        warmup_epochs: instead, a ramp per epoch, w = min((epoch + 1) / warmup_epochs, 1).
    """

    family = "classifier"
    paper = "Chen et al. 2021, Distilling Knowledge via Knowledge Review (CVPR 2021, arXiv:2104.09044)"
    # The official CIFAR-100 scripts weight the review term from 0.6 to 8; this brackets them.
    search_space = {"weight": LogUniform(0.5, 10.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.2", "features.5", "classifier.2"],  # noqa: B006
        student_layers: list[str] = ["features.2", "features.5", "classifier.2"],  # noqa: B006
        weight: NonNegativeFloat = 1.0,
        ce_weight: NonNegativeFloat = 1.0,
        max_mid_channels: PositiveInt = 512,
        warmup: Fraction = 20 / 240,
        warmup_epochs: PositiveInt | None = None,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers) or not teacher_layers:
            raise ValueError(
                f"reviewkd pairs layers one to one: teacher_layers has {len(teacher_layers)} entries and student_layers "
                f"{len(student_layers)}; give both the same number (at least one)."
            )
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.weight, self.ce_weight, self.max_mid_channels = weight, ce_weight, max_mid_channels
        self.warmup, self.warmup_epochs = warmup, warmup_epochs
        self.abfs: nn.ModuleList | None = None
        self.out_sizes: list[tuple[int, int]] = []

    warmup_weight = DKD.warmup_weight  # the same linear ramp, per step over a share of the schedule or per epoch

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            try:
                build_abfs([student_shapes[s]], [teacher_shapes[t]], self.max_mid_channels)
            except ValueError as error:
                problems.append(f"{error} (student '{s}', teacher '{t}')")
        return problems

    def setup(self, stage: str) -> None:
        if self.abfs is not None:
            return
        student_shapes, teacher_shapes = tapped_shapes(self, self.student_layers, self.teacher_layers)
        teacher = [teacher_shapes[p] for p in self.teacher_layers]
        self.abfs = build_abfs([student_shapes[p] for p in self.student_layers], teacher, self.max_mid_channels)
        self.out_sizes = [tuple(shape[2:]) if len(shape) == 4 else (1, 1) for shape in teacher]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, student_features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
        dtype = self.abfs[0].conv1[0].weight.dtype
        fused = review(self.abfs, [as_map(student_features[p]).to(dtype) for p in self.student_layers], self.out_sizes)
        review_loss = sum(hcl_loss(f, as_map(signal.features[p])) for f, p in zip(fused, self.teacher_layers))
        warmup = self.warmup_weight()
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + warmup * self.weight * review_loss
        size = batch["y"].shape[0]
        self.log_train("train/review", review_loss, size)
        self.log_train("train/warmup", torch.tensor(warmup), size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
