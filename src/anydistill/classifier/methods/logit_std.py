"""Logit standardization in knowledge distillation (Sun et al., CVPR 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.classifier.common import classifier_validation_step, teacher_signal
from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec, PositiveFloat
from anydistill.core.space import LogUniform
from anydistill.core.teacher import Teacher


def standardize_logits(logits: Tensor, *, eps: float = 1e-7) -> Tensor:
    r"""Z-score each row of logits: :math:`(z - \bar z) / (\sigma(z) + \epsilon)`.

    :math:`\sigma` is the sample standard deviation over the classes, with Bessel's correction
    (``Tensor.std``'s default), as the official code's ``normalize`` (sunshangquan/
    logit-standardization-KD) and torchdistill's ``LogitStdKDLoss.standardize``. A population
    standard deviation (:math:`1/C`) would differ by the constant factor :math:`\sqrt{C / (C - 1)}`
    (1.005 for 100 classes, 1.054 for 10), equivalent to scaling the base temperature by it.

    Args:
        logits: ``[B, C]`` with ``C >= 2``.
        eps: added to the standard deviation (1e-7 in both references).

    Returns:
        ``[B, C]``, each row of mean 0 and sample standard deviation ~1.
    """
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + eps)


def logit_std_kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 2.0, eps: float = 1e-7
) -> Tensor:
    r"""KD on standardized logits, the paper's plug-in for KD (Algorithm 1 with the KL divergence).

    .. math::

        \mathcal{L} = \tau^2 \, \frac{1}{B} \sum_{b=1}^{B}
            \mathrm{KL}\!\left( \mathrm{softmax}\!\big(\mathcal{Z}(z_t^{(b)}) / \tau\big)
            \,\Big\|\, \mathrm{softmax}\!\big(\mathcal{Z}(z_s^{(b)}) / \tau\big) \right)

    with :math:`\mathcal{Z}` = :func:`standardize_logits`. Each side is thus softened by its own
    per-sample temperature :math:`\tau \, \sigma(z)`: the student need not match the teacher's
    logit range, only its relations. The :math:`\tau^2` factor is the official ``kd_loss``'s
    (``loss_kd *= temperature**2``).

    Args:
        student_logits: ``[B, C]`` with ``C >= 2``, gradients flow into it.
        teacher_logits: ``[B, C]``; detached.
        temperature: the base temperature :math:`\tau > 0` (2 in the official runs).
        eps: added to each standard deviation.

    Returns:
        Scalar loss (the ``batchmean`` KL times :math:`\tau^2`).
    """
    problems = []
    for name, value in (("temperature", temperature), ("eps", eps)):
        if not (is_finite_number(value) and value > 0):
            problems.append(f"The '{name}' argument of logit_std_kd_loss must be a finite number > 0. Got {value!r}.")
    shape = student_logits.shape
    if shape != teacher_logits.shape or len(shape) != 2 or shape[1] < 2:
        problems.append(
            "The 'student_logits' and 'teacher_logits' arguments of logit_std_kd_loss must both have shape "
            f"[B, C] with C >= 2. Got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    raise_problems(problems)
    log_p_s = F.log_softmax(standardize_logits(_upcast(student_logits), eps=eps) / temperature, dim=1)
    log_p_t = F.log_softmax(standardize_logits(_upcast(teacher_logits.detach()), eps=eps) / temperature, dim=1)
    # F.kl_div(input, target) is KL(target || input); "batchmean" sums over classes, averages over B.
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


class LogitStdKD(DistillationMethod):
    """Hinton's KD on Z-scored logits: both sides are standardized per sample before the
    temperature softmax, so the student matches the teacher's logit relations, not their range:

        L = ce_weight * CE(z_s, y) + kd_weight * tau^2 * KL(softmax(Z(z_t) / tau) || softmax(Z(z_s) / tau))

    The defaults are the official CIFAR-100 run (``--logit-stand --base-temp 2 --kd-weight 9`` with
    the repository's ``KD.LOSS.CE_WEIGHT = 0.1``). torchdistill's example config (and the official
    repository's first ImageNet config) uses a CE weight of 0.5 with the same KD weight and tau.

    Args:
        temperature: the base temperature tau.
        kd_weight: weight of the standardized KD term.
        ce_weight: weight of the label cross-entropy.
    """

    family = "classifier"
    paper = "Sun, Ren, Li, Wang & Cao 2024, Logit Standardization in Knowledge Distillation (CVPR 2024, arXiv:2403.01427)"
    # The official CIFAR-100 logs are named with base temperatures 2-4 and KD weights 1-12 (mostly 2 and 9).
    search_space = {"temperature": LogUniform(1.0, 8.0), "kd_weight": LogUniform(1.0, 30.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        temperature: PositiveFloat = 2.0,
        kd_weight: NonNegativeFloat = 9.0,
        ce_weight: NonNegativeFloat = 0.1,
    ):
        super().__init__(student, teacher, optimizer)
        self.temperature, self.kd_weight, self.ce_weight = temperature, kd_weight, ce_weight

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student_logits = self.student(batch["x"])
        teacher_logits = teacher_signal(self, batch).logits
        soft = logit_std_kd_loss(student_logits, teacher_logits, temperature=self.temperature)
        loss = self.ce_weight * F.cross_entropy(student_logits.float(), batch["y"]) + self.kd_weight * soft
        size = batch["y"].shape[0]
        self.log_train("train/kd", soft, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        return loss

    validation_step = classifier_validation_step
