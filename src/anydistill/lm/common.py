"""What every language-model method shares: batch views, the vocabulary check at start,
global token-count normalisation, the validation step and the teacher's logits.

Shared as functions rather than a base class (DESIGN.md: one level of inheritance below
`DistillationMethod`).

Alignment: a block ``input_ids`` [B, L] gives logits [B, L, V]; position t predicts token t + 1,
so the losses see ``logits[:, :-1]`` against ``input_ids[:, 1:]`` under ``completion_mask[:, 1:]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from anydistill.core.errors import RecipeError
from anydistill.core.method import DistillationMethod
from anydistill.core.teacher import Teacher
from anydistill.lm.teacher_kernels import fuse_teacher_activations
from anydistill.lm.token_losses import normalize, token_ce_loss
from anydistill.lm.vocab import check_vocab

log = logging.getLogger(__name__)


def causal_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """``logits[:, :-1]`` [B, L-1, V] of a transformers causal LM: the prediction for each next token."""
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]


def frozen_pass(model: nn.Module, forward: Callable[[nn.Module, Tensor, Tensor | None], Tensor], input_ids: Tensor,
                attention_mask: Tensor | None) -> Tensor:
    """``forward(model, input_ids, attention_mask)`` for a frozen teacher: in eval mode (its dropout
    stays off whatever a user did), on the model's device, under ``inference_mode``.

    ``inference_mode`` skips all autograd bookkeeping (~10 % faster than ``no_grad`` on the
    benchmark teacher). The result is an inference tensor: the losses select its masked rows (or
    form logits from it) first, so it is never saved for backward itself.
    """
    if model.training:
        model.eval()
    mask = attention_mask.to(model.device) if attention_mask is not None else None
    with torch.inference_mode():
        return forward(model, input_ids.to(model.device), mask)


def teacher_logits(teacher: Teacher, input_ids: Tensor, attention_mask: Tensor | None, vocab: int) -> Tensor:
    """The frozen teacher's ``logits[:, :-1, :vocab]`` (one forward, no graph: `frozen_pass`)."""
    return frozen_pass(teacher.model, causal_logits, input_ids, attention_mask)[..., :vocab]


def targets_and_mask(input_ids: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(input_ids[:, 1:], completion_mask[:, 1:])``: the tokens the logits predict and which count."""
    return input_ids[:, 1:], completion_mask[:, 1:]


def lm_data_problems(method: DistillationMethod, datamodule: Any, teacher: nn.Module | None) -> list[str]:
    """The models against the set-up text data (`DistillationMethod.data_problems` of every LM
    method): vocabulary and special ids (`check_vocab`), and positions for ``data.block_size``."""
    if not hasattr(datamodule, "tokenizer"):
        return [f"method '{type(method).__name__}': language-model methods need a text data module with a tokenizer (e.g. data: {{name: shakespeare}})."]
    try:
        check_vocab(method.student, teacher, datamodule.tokenizer)
    except ValueError as error:
        return [str(error)]
    problems = []
    for role, model in (("student", method.student), ("teacher", teacher)):
        positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None) if model is not None else None
        if positions is not None and positions < datamodule.block_size:
            problems.append(f"The {role} has {positions} positions but data.block_size is {datamodule.block_size}: "
                            f"set {role}.n_positions >= {datamodule.block_size} or a smaller data.block_size.")
    return problems


def prepare(method: DistillationMethod) -> int:
    """Check the models against the data module's tokenizer when fitting starts (the checks
    `anydistill validate` already ran); returns ``V_shared``.

    Raises:
        RecipeError: one line naming the fix (vocabulary, special ids, blocks longer than the models' positions).
    """
    datamodule = method.trainer.datamodule if method.trainer is not None else None
    if datamodule is None:
        datamodule = getattr(method, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "tokenizer"):
        raise RecipeError([f"method '{type(method).__name__}': language-model methods need a text data module with a tokenizer (e.g. data: {{name: shakespeare}})."])
    datamodule.setup()
    teacher = method.teacher.model if method.teacher is not None else None
    problems = method.data_problems(datamodule, teacher)
    if problems:
        raise RecipeError(problems)
    with warnings.catch_warnings():  # data_problems has just warned about a padded vocabulary
        warnings.simplefilter("ignore")
        vocab = check_vocab(method.student, teacher, datamodule.tokenizer)
    if teacher is not None and (fused := fuse_teacher_activations(teacher)):
        log.info("teacher: %d tanh-GELU modules run as transformers' fused GELUTanh (same function)", fused)
    return vocab


def step_loss(method: DistillationMethod, loss_sum: Tensor, num_tokens: int) -> Tensor:
    """The micro-batch loss whose gradients, summed over accumulation and averaged over DDP ranks,
    are those of the per-token mean over the whole optimisation step.

    N_global = accumulate_grad_batches * sum over ranks of this micro-batch's count. The data
    module drops incomplete batches, so with dataset completions every micro-batch of a window
    has the same count and this is exact; with generated completions cut at ``<eos>`` (gkd) the
    counts of the other micro-batches of the window are not known yet and this micro-batch's
    count stands for them (ranks are still exact). Lightning divides the returned loss by
    ``accumulate_grad_batches``, which the factor ``accumulate`` undoes.
    """
    trainer = method.trainer
    accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
    world = trainer.world_size if trainer is not None else 1
    count: int | Tensor = num_tokens
    if world > 1 and dist.is_available() and dist.is_initialized():
        count = torch.tensor(float(num_tokens), device=loss_sum.device)
        dist.all_reduce(count)
    return normalize(loss_sum, count * accumulate, world_size=world) * accumulate


def ce_step(method: DistillationMethod, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy on the batch's completion tokens (SFT and teacher training)."""
    targets, mask = targets_and_mask(batch["input_ids"], batch["completion_mask"])
    logits = causal_logits(method.student, batch["input_ids"], batch["attention_mask"])
    ce_sum, count = token_ce_loss(logits, targets, mask)
    loss = step_loss(method, ce_sum, count)
    method.log_train("train/loss", ce_sum.detach() / max(count, 1), batch["input_ids"].shape[0], prog_bar=True)
    return loss


@torch.no_grad()
def lm_validation_step(method: DistillationMethod, batch: dict[str, Tensor], batch_idx: int) -> None:
    """Validation NLL per completion token (``val/nll``, an epoch mean weighted by tokens)."""
    targets, mask = targets_and_mask(batch["input_ids"], batch["completion_mask"])
    logits = causal_logits(method.student, batch["input_ids"], batch["attention_mask"])
    ce_sum, count = token_ce_loss(logits, targets, mask)
    method.log("val/nll", ce_sum / max(count, 1), on_epoch=True, prog_bar=True, batch_size=max(count, 1), sync_dist=True)


@torch.no_grad()
def generate(model: nn.Module, prompts: Tensor, new_tokens: int, *, do_sample: bool, temperature: float = 1.0,
             num_beams: int = 1, eos_token_id: int, pad_token_id: int, beams_returned: int = 1) -> tuple[Tensor, Tensor]:
    """Continue ``prompts`` [B, P] by ``new_tokens`` tokens with the model's KV cache.

    Sampling is plain ancestral sampling at ``temperature`` (``top_k=0``, ``top_p=1``, as TRL's GKD);
    it draws from the global torch RNG, which the engine seeds and checkpoints. Without sampling,
    decoding is greedy (``num_beams = 1``) or beam search (transformers' default length penalty 1),
    returning the best beam (the ``beams_returned`` best, best first, with beam search).

    Returns:
        ``(sequences [B * beams_returned, P + new_tokens], completion_mask [same])``: sequences that
        stopped at ``<eos>`` are padded; the mask is True on generated tokens up to and including
        the first ``<eos>``.
    """
    was_training = model.training
    model.eval()  # no dropout while sampling
    options = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if do_sample else
               {"do_sample": False, "num_beams": num_beams, "num_return_sequences": beams_returned})
    out = model.generate(
        input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=0,
        use_cache=True, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options,
    )
    model.train(was_training)
    batch, length = out.shape[0], prompts.shape[1] + new_tokens
    if out.shape[1] < length:  # every sequence stopped early
        out = torch.cat([out, out.new_full((batch, length - out.shape[1]), pad_token_id)], dim=1)
    generated = out[:, prompts.shape[1]:]
    is_eos = generated == eos_token_id
    # Tokens after the first <eos> are padding: keep the <eos> itself, drop what follows.
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = torch.zeros(batch, length, dtype=torch.bool, device=out.device)
    mask[:, prompts.shape[1]:] = ~after_eos
    return out, mask


def teacher_generate(teacher: Any, prompts: Tensor, new_tokens: int, **options: Any) -> tuple[Tensor, Tensor]:
    """`generate` by a teacher, on ``prompts``' device: the in-process teacher's module, or a served
    teacher's server (`ServedTeacher.generate`: no module here). ``options`` are `generate`'s."""
    if teacher.model is None:
        ids, mask = teacher.generate(prompts, new_tokens, **options)
    else:
        ids, mask = generate(teacher.model, prompts.to(teacher.model.device), new_tokens, **options)
    return ids.to(prompts.device), mask.to(prompts.device)
