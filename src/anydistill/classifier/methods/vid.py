"""Variational information distillation (Ahn et al., CVPR 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features, tapped_shapes
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def vid_variance(log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    r"""The per-channel variance of VID's Gaussian, as in the paper:

    .. math:: \sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon

    (softplus, so the variance stays positive whatever :math:`\alpha_c`; :math:`\epsilon` bounds it
    away from 0). Note that :math:`\sigma_c^2`, not :math:`\sigma_c`, is the softplus.

    Args:
        log_scale: :math:`\alpha`, ``[C]``.
        eps: :math:`\epsilon > 0` (1e-5 in the official code and mdistiller).

    Returns:
        ``[C]`` variances.
    """
    return F.softplus(log_scale) + eps


def vid_initial_log_scale(init_variance: float, eps: float = 1e-5) -> float:
    """The :math:`\\alpha` at which `vid_variance` equals ``init_variance`` (the inverse softplus)."""
    return math.log(math.expm1(init_variance - eps))


def vid_loss(pred_mean: Tensor, teacher_features: Tensor, variance: Tensor) -> Tensor:
    r"""VID's negative log-likelihood of the teacher's features under the student's Gaussian.

    .. math::

        \mathcal{L}_{VID} = \operatorname{mean}_{b, c, h, w} \; \tfrac12 \left(
            \frac{(t_{b,c,h,w} - \mu_{b,c,h,w})^2}{\sigma_c^2} + \log \sigma_c^2 \right)

    i.e. :math:`-\log \mathcal{N}(t; \mu(s), \sigma_c^2)` without the constant
    :math:`\tfrac12 \log 2\pi`, averaged over every element as the official code (RepDistiller's
    and mdistiller's ``VIDLoss``, torchdistill's ``VIDLoss``) does; the paper sums over
    channels and positions instead (a constant factor, absorbed in the loss weight).

    Args:
        pred_mean: :math:`\mu(s)`, the regressor's output: ``[B, C, H, W]`` (conv maps) or
            ``[B, C]`` (flat features); gradients flow into it.
        teacher_features: :math:`t`, the same shape; detached.
        variance: :math:`\sigma^2`, ``[C]`` (`vid_variance`), one per channel; gradients flow.

    Returns:
        Scalar loss.
    """
    if pred_mean.shape != teacher_features.shape or pred_mean.ndim not in (2, 4):
        raise ValueError(
            "The 'pred_mean' and 'teacher_features' arguments of vid_loss must have the same shape, "
            f"[B, C, H, W] or [B, C]. Got {tuple(pred_mean.shape)} and {tuple(teacher_features.shape)}."
        )
    if variance.shape != pred_mean.shape[1:2]:
        raise ValueError(
            f"The 'variance' argument of vid_loss must have shape [C] = [{pred_mean.shape[1]}]. Got {tuple(variance.shape)}."
        )
    mean, target = _upcast(pred_mean), _upcast(teacher_features.detach())
    var = _upcast(variance).view(1, -1, *([1] * (mean.ndim - 2)))  # broadcast over batch and positions
    return (0.5 * ((mean - target).pow(2) / var + var.log())).mean()


class VIDRegressor(nn.Module):
    """The student side of VID for one layer pair: the mean regressor mu and the variances.

    Conv maps: three bias-free 1x1 convolutions with ReLUs between them (in -> C_t -> C_t -> C_t),
    as the official code; flat features: the same with linear layers. The variances start at
    ``init_variance`` for every channel.
    """

    def __init__(self, conv: bool, in_channels: int, out_channels: int, init_variance: float, eps: float):
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, kernel_size=1, bias=False)) if conv else (lambda i, o: nn.Linear(i, o, bias=False))
        self.mean = nn.Sequential(
            layer(in_channels, out_channels), nn.ReLU(), layer(out_channels, out_channels), nn.ReLU(),
            layer(out_channels, out_channels),
        )
        self.log_scale = nn.Parameter(torch.full((out_channels,), vid_initial_log_scale(init_variance, eps)))
        self.eps = eps

    def forward(self, student_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(student_features), vid_variance(self.log_scale, self.eps)


def build_vid_regressor(student_shape: torch.Size, teacher_shape: torch.Size, init_variance: float, eps: float) -> VIDRegressor:
    """A `VIDRegressor` from one layer pair's output shapes (batch dimension included).

    Raises:
        ValueError: one line when the pair is not two conv maps or two flat features.
    """
    if len(student_shape) == len(teacher_shape) and len(student_shape) in (2, 4):
        return VIDRegressor(len(student_shape) == 4, student_shape[1], teacher_shape[1], init_variance, eps)
    raise ValueError(
        f"vid pairs a student output {tuple(student_shape[1:])} with a teacher output {tuple(teacher_shape[1:])}; "
        f"it needs two conv maps [C, H, W] or two flat features [D]: pick layers of the same kind."
    )


def pool_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two [B, C, H, W] maps, per dim, to the smaller size (flat features pass)."""
    if student.ndim != 4 or student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    return tuple(x if x.shape[2:] == size else F.adaptive_avg_pool2d(x, size) for x in (student, teacher))


class VID(DistillationMethod):
    """Maximise a variational lower bound on the mutual information between teacher and student
    features: at each layer pair, the student predicts a Gaussian over the teacher's features,
    with a regressed mean mu(s) and a learned per-channel variance sigma_c^2:

        L = ce_weight * CE(z_s, y) + weight * sum_pairs vid_loss(mu(s), t, sigma^2) [+ kd_weight * T^2 KL],

    as RepDistiller (``--distill vid -a 0 -b 1``) and mdistiller (CE 1, VID 1, no KD). Maps of
    different spatial sizes are average-pooled to the smaller size first, as both do.

    Args:
        teacher_layers, student_layers: paired module paths (same length), conv maps [B, C, H, W]
            or flat features [B, D].
        weight: weight of the VID term (sum over pairs).
        init_variance: the variances' initial value (5 in the official code).
        eps: the variances' floor epsilon (1e-5).
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off, as officially) and its T.
    """

    family = "classifier"
    paper = "Ahn et al. 2019, Variational Information Distillation for Knowledge Transfer (CVPR 2019, arXiv:1904.05835)"
    # RepDistiller and mdistiller weight the VID term by 1 on CIFAR-100; this brackets it by 10x either way.
    search_space = {"weight": LogUniform(0.1, 10.0), "init_variance": LogUniform(0.5, 10.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        student_layers: list[str] = ["features.2", "features.5"],  # noqa: B006
        weight: NonNegativeFloat = 1.0,
        init_variance: PositiveFloat = 5.0,
        eps: PositiveFloat = 1e-5,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers) or not teacher_layers:
            raise ValueError(
                f"vid pairs layers one to one: teacher_layers has {len(teacher_layers)} entries and student_layers "
                f"{len(student_layers)}; give both the same number (at least one)."
            )
        if init_variance <= eps:
            raise ValueError(f"vid's init_variance ({init_variance}) must exceed eps ({eps}); raise init_variance.")
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.weight, self.init_variance, self.eps = weight, init_variance, eps
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.regressors: nn.ModuleList | None = None

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            try:
                build_vid_regressor(student_shapes[s], teacher_shapes[t], self.init_variance, self.eps)
            except ValueError as error:
                problems.append(f"{error} (student '{s}', teacher '{t}')")
        return problems

    def setup(self, stage: str) -> None:
        if self.regressors is not None:
            return
        student_shapes, teacher_shapes = tapped_shapes(self, self.student_layers, self.teacher_layers)
        self.regressors = nn.ModuleList(
            build_vid_regressor(student_shapes[s], teacher_shapes[t], self.init_variance, self.eps)
            for s, t in zip(self.student_layers, self.teacher_layers)
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, student_features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
        vid = 0.0
        for regressor, s, t in zip(self.regressors, self.student_layers, self.teacher_layers):
            f_s, f_t = pool_to_common_size(student_features[s], signal.features[t])
            mean, variance = regressor(f_s)
            vid = vid + vid_loss(mean, f_t, variance)
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * vid
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/vid", vid, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
