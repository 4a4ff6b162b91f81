"""A comprehensive overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, student_and_teacher_features
from anydistill.classifier.preactivation import build_connector, preactivation_problems, probe_outputs
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.space import LogUniform
from anydistill.core.taps import find_module
from anydistill.core.teacher import Teacher
from anydistill.losses import kd_kl


def ofd_margin(mean: Tensor, std: Tensor) -> Tensor:
    r"""The per-channel margin m of OFD's teacher transform: the expected value of a teacher's
    negative response, for responses :math:`x \sim \mathcal{N}(\mu_c, \sigma_c^2)`:

    .. math::

        m_c = \mathbb{E}[x \mid x < 0] = \mu_c - \sigma_c \,
              \frac{\phi(\mu_c / \sigma_c)}{\Phi(-\mu_c / \sigma_c)}
        \quad \text{if } \Phi(-\mu_c / \sigma_c) > 10^{-3}, \text{ else } -3 \sigma_c

    (:math:`\phi`, :math:`\Phi` the standard normal density and CDF), as the official
    ``get_margin_from_BN`` and mdistiller, which take :math:`\mu_c` and :math:`|\sigma_c|` from the
    shift and scale of the BatchNorm before the ReLU.

    Args:
        mean: :math:`\mu`, ``[C]``.
        std: :math:`\sigma`, ``[C]`` (its absolute value is used; clamped at 1e-12).

    Returns:
        ``[C]`` margins (<= 0), float64.
    """
    mean, std = mean.detach().double(), std.detach().double().abs().clamp_min(1e-12)
    ratio = mean / std
    p_negative = torch.special.ndtr(-ratio)
    density = torch.exp(-ratio.pow(2) / 2) / math.sqrt(2 * math.pi)
    expected = mean - std * density / p_negative.clamp_min(1e-300)
    return torch.where(p_negative > 1e-3, expected, -3 * std)


def ofd_loss(student_connected: Tensor, teacher_preact: Tensor, margin: Tensor) -> Tensor:
    r"""OFD's partial L2 distance between the teacher's margin-ReLU'd features and the student's:

    .. math::

        T' = \max(T, m), \qquad
        \mathcal{L}_{OFD} = \frac{1}{B} \sum_{b, c, h, w}
            \begin{cases} 0 & S \le T' \text{ and } T' \le 0 \\ (T' - S)^2 & \text{otherwise} \end{cases}

    the paper's Eq. (2)-(3) with the margin ReLU :math:`\sigma_m(x) = \max(x, m)`: where the
    teacher's response is negative, a student response below it is not penalised. Sum over
    elements divided by the batch size, as the official ``distillation_loss(...) / batch_size``
    and mdistiller's ``feat_loss`` (its three cases are this one, case by case).

    Args:
        student_connected: :math:`S = r(F_s)`, the connector's output: ``[B, C, H, W]`` or ``[B, C]``;
            gradients flow into it.
        teacher_preact: :math:`T`, the teacher's pre-ReLU responses, the same shape; detached.
        margin: :math:`m`, ``[C]`` (`ofd_margin`).

    Returns:
        Scalar loss.
    """
    if student_connected.shape != teacher_preact.shape or student_connected.ndim not in (2, 4):
        raise ValueError(
            "The 'student_connected' and 'teacher_preact' arguments of ofd_loss must have the same shape, "
            f"[B, C, H, W] or [B, C]. Got {tuple(student_connected.shape)} and {tuple(teacher_preact.shape)}."
        )
    if margin.shape != student_connected.shape[1:2]:
        raise ValueError(f"The 'margin' argument of ofd_loss must have shape [C] = [{student_connected.shape[1]}]. Got {tuple(margin.shape)}.")
    s = _upcast(student_connected)
    m = margin.detach().to(s.dtype).view(1, -1, *([1] * (s.ndim - 2)))
    t = torch.maximum(_upcast(teacher_preact.detach()), m)
    return ((s - t).pow(2) * ((s > t) | (t > 0))).sum() / s.shape[0]


def ofd_layer_weights(num_pairs: int) -> list[float]:
    """The official per-pair weights: deepest pair 1, each shallower one half the next."""
    return [2.0 ** (i - num_pairs + 1) for i in range(num_pairs)]


class OFDPair(nn.Module):
    """One layer pair's connector (conv 1x1 + BN, or linear + BN) and the teacher's margins (a buffer)."""

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size, margin: Tensor):
        super().__init__()
        self.connector = build_connector(student_shape, teacher_shape)
        self.register_buffer("margin", margin.float())

    def forward(self, student_preact: Tensor) -> Tensor:
        return self.connector(student_preact)


class OFD(DistillationMethod):
    """Feature distillation at the pre-ReLU positions: the student's pre-ReLU features, through a
    connector (1x1 conv + BN), match the teacher's pre-ReLU features passed through a margin ReLU
    (negative responses raised to the channel's expected negative value m), with the partial L2
    distance that ignores a student below a negative teacher:

        L = ce_weight * CE(z_s, y) + weight * sum_pairs w_i * ofd_loss(r(s_i), pool(t_i), m_i) [+ kd_weight * T^2 KL],

    w_i = 1, 1/2, 1/4... from the deepest pair, as the official code and mdistiller (CE 1,
    weight 1e-3 on CIFAR; the official ImageNet runs use 1e-4). A teacher map of another height or
    width is average-pooled to the student's, as mdistiller.

    The margins come from the BatchNorm before the ReLU when the teacher layer is one (its shift as
    the mean, its scale as the std, as the paper); otherwise (``small-cnn`` has no BatchNorm) from
    the per-channel mean and std of the tapped responses on up to ``margin_rows`` training rows.
    The tapped outputs must be pre-ReLU on both sides (small-cnn: ``features.0``, ``features.3``,
    ``classifier.1``); a layer with no negative value on the training rows is refused.

    Args:
        teacher_layers, student_layers: paired module paths (same length): two conv maps or two flat features each.
        weight: weight of the distillation term (1e-3).
        margin_rows: training rows for the margins' statistics when the teacher layer is no BatchNorm.
        ce_weight: weight of the label cross-entropy (1).
        kd_weight, temperature: weight of an optional Hinton KD term (0: off) and its T.
    """

    family = "classifier"
    paper = "Heo, Kim, Yun, Park, Kwak & Choi 2019, A Comprehensive Overhaul of Feature Distillation (ICCV 2019, arXiv:1904.01866)"
    # Official: 1e-3 (CIFAR) and 1e-4 (ImageNet). The loss sums over elements, so smaller maps than
    # CIFAR's want a larger weight: a decade below ImageNet's to two above CIFAR's.
    search_space = {"weight": LogUniform(1e-5, 1e-1)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        teacher_layers: list[str] = ["features.0", "features.3"],  # noqa: B006
        student_layers: list[str] = ["features.0", "features.3"],  # noqa: B006
        weight: NonNegativeFloat = 1e-3,
        margin_rows: PositiveInt = 2048,
        ce_weight: NonNegativeFloat = 1.0,
        kd_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(student, teacher, optimizer)
        if len(teacher_layers) != len(student_layers) or not teacher_layers:
            raise ValueError(
                f"ofd pairs layers one to one: teacher_layers has {len(teacher_layers)} entries and student_layers "
                f"{len(student_layers)}; give both the same number (at least one)."
            )
        self.teacher_layers, self.student_layers = list(teacher_layers), list(student_layers)
        self.weight, self.margin_rows = weight, margin_rows
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.pairs: nn.ModuleList | None = None

    def teacher_taps(self) -> list[str]:
        return self.teacher_layers

    def student_taps(self) -> list[str]:
        return self.student_layers

    def recipe_problems(self, *, teacher_shapes, student_shapes, max_epochs) -> list[str]:
        problems = []
        for s, t in zip(self.student_layers, self.teacher_layers):
            s_shape, t_shape = student_shapes[s], teacher_shapes[t]
            if len(s_shape) != len(t_shape) or len(s_shape) not in (2, 4):
                problems.append(
                    f"ofd cannot pair a student output {tuple(s_shape[1:])} with a teacher output {tuple(t_shape[1:])}; "
                    f"pick two conv maps [C, H, W] or two flat features [D] (student '{s}', teacher '{t}')"
                )
        return problems

    def teacher_margin(self, path: str) -> Tensor:
        """``[C]`` margins of the teacher layer ``path``: from its BatchNorm, or from its responses' statistics."""
        module = find_module(self.teacher.model, path)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            return ofd_margin(module.bias, module.weight)
        x = self.trainer.datamodule.split("train")[0]
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: self.margin_rows]
        chunks = [self.teacher(x[rows[i:i + 256]], taps=[path]).features[path].double() for i in range(0, len(rows), 256)]
        responses = torch.cat(chunks).transpose(0, 1).flatten(1)  # [C, rows * positions]
        return ofd_margin(responses.mean(1), responses.std(1, correction=0))

    def setup(self, stage: str) -> None:
        if self.pairs is not None:
            return
        student_out, teacher_out = probe_outputs(self, self.student_layers, self.teacher_layers)
        problems = self.recipe_problems(teacher_shapes={p: v.shape for p, v in teacher_out.items()},
                                        student_shapes={p: v.shape for p, v in student_out.items()}, max_epochs=1)
        problems += preactivation_problems("ofd", "teacher", teacher_out) + preactivation_problems("ofd", "student", student_out)
        if problems:
            raise ValueError(problems[0])
        self.pairs = nn.ModuleList(
            OFDPair(student_out[s].shape, teacher_out[t].shape, self.teacher_margin(t).cpu())
            for s, t in zip(self.student_layers, self.teacher_layers)
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        signal, student_logits, features = student_and_teacher_features(self, batch, self.student_layers, self.teacher_layers)
        ofd = 0.0
        for pair, s, t, w in zip(self.pairs, self.student_layers, self.teacher_layers, ofd_layer_weights(len(self.pairs))):
            connected, target = pair(features[s]), signal.features[t]
            if target.ndim == 4 and target.shape[2:] != connected.shape[2:]:
                target = F.adaptive_avg_pool2d(target, connected.shape[2:])
            ofd = ofd + w * ofd_loss(connected, target, pair.margin)
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.weight * ofd
        size = batch["y"].shape[0]
        if self.kd_weight > 0:
            soft = kd_kl(student_logits, signal.logits, temperature=self.temperature)
            loss = loss + self.kd_weight * soft
            self.log_train("train/kd", soft, size)
        self.log_train("train/ofd", ofd, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()
