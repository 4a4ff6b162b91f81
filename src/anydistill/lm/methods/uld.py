"""Universal Logit Distillation (``uld``): distillation across tokenizers through sorted probabilities."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import NonNegativeFloat, OptimizerSpec
from anydistill.core.space import Uniform
from anydistill.core.teacher import Teacher
from anydistill.lm.common import lm_validation_step, step_loss
from anydistill.lm.cross_tokenizer import sorted_l1
from anydistill.lm.paired import (
    Side,
    logits_of,
    paired_data_problems,
    prepare_paired,
    student_side,
    teacher_logits_of,
    teacher_side,
    text_widths,
)
from anydistill.lm.token_losses import token_ce_loss


def first_n(mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``mask`` [B, W] keeping only the first ``n[b]`` True positions of each row."""
    return mask & ((mask.long().cumsum(1) - 1) < n[:, None])


class ULD(DistillationMethod):
    r"""ULD (Boizard et al. 2024): the student and the teacher read the same prompt and completion,
    each in its own tokens (paired data, `anydistill.data.paired_text`). The two completions are
    aligned at their first token and cut to the shorter one; at each of those N positions the two
    next-token distributions (T = 1) are sorted in decreasing order, the narrower zero-padded, and

    .. math::

        L = w_{CE}\,\frac{1}{N_s}\sum_t -\log q_\theta(y_t)
            + w_D\,\frac{1}{N}\sum_{t=1}^{N}\sum_i \big|\mathrm{sort}_\downarrow(q_t)_i - \mathrm{sort}_\downarrow(p_t)_i\big|

    over the optimisation step (``N_s`` the student's completion tokens). As in the reference
    (``Nicolas-BZRD/llm-recipes``, ``models/distillation_model.py``): token k of one side faces
    token k of the other whatever text they cover, no vocabulary correspondence is used, and the
    CE is the student's on the data. Means are over the step's tokens (the reference averages per
    example, then over the batch).

    Args:
        crossentropy_weight: :math:`w_{CE}` (the reference's 1).
        distillation_weight: :math:`w_D` (the reference's ``distil_factor`` 1.5).
        skip_eos: leave out each side's final ``<eos>`` from the distillation term (the
            reference's ``skip_student_eos`` / ``skip_teacher_eos``).
    """

    family = "lm"
    paper = "Boizard et al. 2024, Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs (TMLR, arXiv:2402.12030)"
    search_space = {"distillation_weight": Uniform(0.5, 3.0)}

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        crossentropy_weight: NonNegativeFloat = 1.0,
        distillation_weight: NonNegativeFloat = 1.5,
        skip_eos: bool = False,
    ):
        super().__init__(student, teacher, optimizer)
        self.crossentropy_weight, self.distillation_weight, self.skip_eos = crossentropy_weight, distillation_weight, skip_eos

    def setup(self, stage: str) -> None:
        data = prepare_paired(self)
        self.student_eos, self.teacher_eos = data.tokenizer.eos_token_id, data.teacher_tokenizer.eos_token_id
        self.widths = text_widths(self.student, self.teacher.model, data)

    def counted(self, side: Side, eos: int) -> torch.Tensor:
        """``[B, W-1]``: the rows of the logits that predict a counted completion token, without a
        final ``<eos>`` when ``skip_eos``."""
        mask = side.counts[:, 1:].clone()
        if self.skip_eos:
            last = mask.long().cumsum(1) == mask.sum(1, keepdim=True)
            mask &= ~(last & mask & (side.ids[:, 1:] == eos))
        return mask

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student, teacher = student_side(batch), teacher_side(batch)
        target = teacher_logits_of(self.teacher.model, teacher.ids, teacher.attention)  # the teacher first (see LMKD.training_step)
        logits = logits_of(self.student, student.ids, student.attention)
        s_mask, t_mask = self.counted(student, self.student_eos), self.counted(teacher, self.teacher_eos)
        # Align at the first completion token and cut to the shorter completion.
        n = torch.minimum(s_mask.sum(1), t_mask.to(s_mask.device).sum(1))
        q = logits[first_n(s_mask, n)][:, : self.widths[0]].float().softmax(-1)
        p = target[first_n(t_mask, n.to(t_mask.device))][:, : self.widths[1]].float().softmax(-1).to(q.device)
        d_sum, count = sorted_l1(q, p).sum(), q.shape[0]
        loss = step_loss(self, self.distillation_weight * d_sum, count)
        shown = self.distillation_weight * d_sum.detach() / max(count, 1)
        size = student.ids.shape[0]
        if self.crossentropy_weight > 0:
            ce_sum, ce_count = token_ce_loss(logits, student.ids[:, 1:], student.counts[:, 1:])
            loss = loss + step_loss(self, self.crossentropy_weight * ce_sum, ce_count)
            shown = shown + self.crossentropy_weight * ce_sum.detach() / max(ce_count, 1)
            self.log_train("train/ce", ce_sum.detach() / max(ce_count, 1), size)
        self.log_train("train/uld", d_sum.detach() / max(count, 1), size)
        self.log_train("train/loss", shown, size, prog_bar=True)
        return loss

    validation_step = lm_validation_step

    def data_problems(self, datamodule: Any, teacher: nn.Module | None) -> list[str]:
        return paired_data_problems("uld", self.student, datamodule, teacher)
