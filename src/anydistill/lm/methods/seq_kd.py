"""Sequence-level knowledge distillation (``seq-kd``): next-token cross-entropy on the teacher's generations."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from anydistill.core.errors import RecipeError
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import OptimizerSpec, PositiveFloat, PositiveInt
from anydistill.core.teacher import Teacher
from anydistill.lm.common import lm_data_problems, causal_logits, lm_validation_step, prepare, step_loss, teacher_generate
from anydistill.lm.served.use import is_served, served_vocab
from anydistill.lm.token_losses import token_ce_loss

log = logging.getLogger(__name__)


class SeqKD(DistillationMethod):
    r"""Sequence-level KD (Kim & Rush 2016): replace the data's completions by the teacher's and
    train the student with cross-entropy on them,

    .. math::

        L = -\frac{1}{N} \sum_t \log q_\theta(\hat y_t \mid x, \hat y_{<t}),\qquad \hat y \sim p(\cdot \mid x)

    The prompt x is the first ``data.prompt_tokens`` tokens of each block; the teacher generates the
    rest with its KV cache. With ``decoding: sample`` or ``greedy`` it does so afresh for every
    batch (new samples every epoch); with ``decoding: beam`` (the paper's) it decodes every training
    prompt once with beam search before training, into a store on disk (`lm.generation_cache`) that
    later epochs and runs read. Generation is the only teacher computation: no teacher forward is
    run on the result (the waste of TRL PR #5726). A served teacher (``teacher: {server: ...}``)
    generates on its server through ``/v1/completions`` (vLLM's, with ``return_token_ids``, or
    ``anydistill serve-teacher``); sampling is seeded from the run's RNG.

    Args:
        decoding: ``sample`` (ancestral, at ``temperature``), ``greedy`` (a beam of 1), or ``beam``
            (``num_beams``, generated once and stored).
        temperature: sampling temperature.
        num_beams: beam width of ``decoding: beam`` (Kim & Rush's 5).
        cache_dir: root directory of the stored beam-search generations.
    """

    family = "lm"
    paper = "Kim & Rush 2016, Sequence-Level Knowledge Distillation (EMNLP, arXiv:1606.07947)"
    data = "teacher-generated"
    served_teacher = True

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        optimizer: OptimizerSpec | None = None,
        *,
        decoding: Literal["sample", "greedy", "beam"] = "sample",
        temperature: PositiveFloat = 1.0,
        num_beams: PositiveInt = 5,
        cache_dir: str = ".anydistill-cache/lm-generations",
    ):
        super().__init__(student, teacher, optimizer)
        self.decoding, self.temperature, self.num_beams, self.cache_dir = decoding, temperature, num_beams, cache_dir
        self.stored = None  # (input_ids [N, L], completion_mask [N, L]) of decoding: beam, loaded in setup

    def setup(self, stage: str) -> None:
        self.vocab = prepare(self)
        data = self.trainer.datamodule
        if is_served(self.teacher):
            self.vocab = served_vocab("seq-kd", self.teacher, data, self.vocab)
        if data.prompt_tokens < 1:
            raise RecipeError(["method 'seq-kd' generates completions from prompts: set data.prompt_tokens >= 1 (e.g. 32)."])
        self.prompt_tokens, self.new_tokens = data.prompt_tokens, data.block_size - data.prompt_tokens
        self.eos_id, self.pad_id = data.tokenizer.eos_token_id, data.tokenizer.pad_token_id
        if self.decoding == "beam" and self.stored is None:
            from anydistill.data.tokenizers import tokenizer_fingerprint
            from anydistill.lm.generation_cache import open_or_build_generations

            ids, mask, directory, built = open_or_build_generations(
                Path(self.cache_dir), self.teacher, data.split("train")[0][:, : self.prompt_tokens], self.new_tokens,
                dataset_fingerprint=data.fingerprint("train"), tokenizer_fingerprint=tokenizer_fingerprint(data.tokenizer),
                num_beams=self.num_beams, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
            )
            self.stored = (ids, mask)
            log.info("seq-kd: beam-search generations (%d beams) %s %s", self.num_beams, "built in" if built else "loaded from", directory)

    def teacher_generations(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids [B, L], completion_mask [B, L])``: the batch's stored beam outputs, or fresh
        teacher continuations of its prompts."""
        if self.stored is not None:
            index = batch["index"].cpu()
            return self.stored[0][index].to(batch["input_ids"].device), self.stored[1][index].to(batch["input_ids"].device)
        prompts = batch["input_ids"][:, : self.prompt_tokens]
        return teacher_generate(self.teacher, prompts, self.new_tokens, do_sample=self.decoding == "sample", temperature=self.temperature,
                                eos_token_id=self.eos_id, pad_token_id=self.pad_id)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids, completion_mask = self.teacher_generations(batch)
        logits = causal_logits(self.student, ids, torch.ones_like(ids))
        ce_sum, count = token_ce_loss(logits, ids[:, 1:], completion_mask[:, 1:])
        self.log_train("train/loss", ce_sum.detach() / max(count, 1), ids.shape[0], prog_bar=True)
        return step_loss(self, ce_sum, count)

    validation_step = lm_validation_step
    data_problems = lm_data_problems
