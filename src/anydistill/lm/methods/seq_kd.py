"""Sequence-level knowledge distillation (``seq-kd``): next-token cross-entropy on the teacher's generations."""

from __future__ import annotations

import torch
from torch import nn

from anydistill.core.errors import RecipeError
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import OptimizerSpec, PositiveFloat
from anydistill.core.teacher import Teacher
from anydistill.lm.common import lm_data_problems, causal_logits, generate, lm_validation_step, prepare, step_loss
from anydistill.lm.token_losses import token_ce_loss


class SeqKD(DistillationMethod):
    r"""Sequence-level KD (Kim & Rush 2016): replace the data's completions by the teacher's and
    train the student with cross-entropy on them,

    .. math::

        L = -\frac{1}{N} \sum_t \log q_\theta(\hat y_t \mid x, \hat y_{<t}),\qquad \hat y \sim p(\cdot \mid x)

    The prompt x is the first ``data.prompt_tokens`` tokens of each block; the teacher generates the
    rest with its KV cache, afresh for every batch (new samples every epoch). Generation is the only
    teacher computation: no teacher forward is run on the result (the waste of TRL PR #5726).

    Args:
        sample: sample from the teacher at ``temperature`` (True) or decode greedily (False, Kim &
            Rush's beam search with a beam of 1).
        temperature: sampling temperature.
    """

    family = "lm"
    paper = "Kim & Rush 2016, Sequence-Level Knowledge Distillation (EMNLP, arXiv:1606.07947)"
    data = "teacher-generated"

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        sample: bool = True,
        temperature: PositiveFloat = 1.0,
    ):
        super().__init__(student, teacher, optimizer)
        self.sample, self.temperature = sample, temperature

    def setup(self, stage: str) -> None:
        self.vocab = prepare(self)
        data = self.trainer.datamodule
        if data.prompt_tokens < 1:
            raise RecipeError(["method 'seq-kd' generates completions from prompts: set data.prompt_tokens >= 1 (e.g. 32)."])
        self.prompt_tokens, self.new_tokens = data.prompt_tokens, data.block_size - data.prompt_tokens
        self.eos_id, self.pad_id = data.tokenizer.eos_token_id, data.tokenizer.pad_token_id

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        prompts = batch["input_ids"][:, : self.prompt_tokens]
        ids, completion_mask = generate(self.teacher.model, prompts.to(self.teacher.model.device), self.new_tokens,
                                        do_sample=self.sample, temperature=self.temperature,
                                        eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        ids, completion_mask = ids.to(prompts.device), completion_mask.to(prompts.device)
        logits = causal_logits(self.student, ids, torch.ones_like(ids))
        ce_sum, count = token_ce_loss(logits, ids[:, 1:], completion_mask[:, 1:])
        self.log_train("train/loss", ce_sum.detach() / max(count, 1), ids.shape[0], prog_bar=True)
        return step_loss(self, ce_sum, count)

    validation_step = lm_validation_step
    data_problems = lm_data_problems
