"""What the cross-tokenizer methods (``uld``, ``gold``) share: the checks of two models against
paired data (`anydistill.data.paired_text`), their forward passes and sampling, and the batch
views of one side.

Alignment as in :mod:`anydistill.lm.common`: a row ``input_ids`` [B, L] gives logits [B, L, V];
position t predicts token t + 1, so token t is scored by logits row t - 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from anydistill.core.errors import RecipeError
from anydistill.core.method import DistillationMethod
from anydistill.lm.common import frozen_pass
from anydistill.lm.vocab import output_width


@dataclass
class Side:
    """One model's view of a batch: ``ids`` [B, W] and ``attention`` [B, W] (0 on padding),
    ``region`` [B, W] bool (the completion's tokens), ``counts`` [B, W] bool (those the loss counts)
    and ``spans`` [B, W, 2] (their byte spans in the completion text)."""

    ids: Tensor
    attention: Tensor
    region: Tensor
    counts: Tensor
    spans: Tensor


def student_side(batch: dict[str, Tensor]) -> Side:
    return Side(batch["input_ids"], batch["attention_mask"], batch["completion_region"], batch["completion_mask"], batch["student_spans"])


def teacher_side(batch: dict[str, Tensor]) -> Side:
    mask = batch["teacher_completion_mask"]
    return Side(batch["teacher_input_ids"], batch["teacher_attention_mask"], mask, mask, batch["teacher_spans"])


def positions(model: nn.Module) -> int | None:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def logits_of(model: nn.Module, ids: Tensor, attention: Tensor) -> Tensor:
    """``logits[:, :-1]`` [B, W-1, V], with positions counted from each row's first attended token
    (rows may be left-padded)."""
    position_ids = (attention.long().cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=attention, position_ids=position_ids, use_cache=False).logits[:, :-1]


def teacher_logits_of(model: nn.Module, ids: Tensor, attention: Tensor) -> Tensor:
    """The frozen teacher's `logits_of` (`lm.common.frozen_pass`: eval mode, ``inference_mode``)."""
    return frozen_pass(model, logits_of, ids, attention)


@torch.no_grad()
def sample(model: nn.Module, prompts: Tensor, attention: Tensor, new_tokens: int, *, temperature: float, top_p: float,
           eos_token_id: int, pad_token_id: int, text_width: int | None = None) -> list[list[int]]:
    """Sample ``new_tokens`` tokens after each (left-padded) prompt [B, P]; the completions' ids,
    each cut after its first ``<eos>`` (kept). Draws from the global torch RNG (``top_k = 0``).
    Ids from ``text_width`` on (a head padded past its tokenizer: `text_widths`) are never drawn."""
    was_training = model.training
    model.eval()
    width = output_width(model)
    suppress = list(range(text_width, width)) if text_width is not None and text_width < width else None
    out = model.generate(input_ids=prompts, attention_mask=attention, max_new_tokens=new_tokens, min_new_tokens=0, do_sample=True,
                         temperature=temperature, top_k=0, top_p=top_p, use_cache=True, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id, suppress_tokens=suppress)
    model.train(was_training)
    rows = []
    for row in out[:, prompts.shape[1] :].tolist():
        rows.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return rows


def side_from_completions(prompt_ids: Tensor, prompt_attention: Tensor, completions: list[list[int]],
                          spans: list[list[tuple[int, int]]], *, width: int, pad_id: int) -> Side:
    """A `Side` of rows ``[prompt | completion | padding]``, ``width`` tokens, completions cut to fit."""
    batch, prompt_width = prompt_ids.shape
    device = prompt_ids.device
    ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((batch, width), dtype=torch.long, device=device)
    region = torch.zeros((batch, width), dtype=torch.bool, device=device)
    span = torch.zeros((batch, width, 2), dtype=torch.long, device=device)
    ids[:, :prompt_width], attention[:, :prompt_width] = prompt_ids, prompt_attention
    for b, (tokens, token_spans) in enumerate(zip(completions, spans)):
        tokens = tokens[: width - prompt_width]
        end = prompt_width + len(tokens)
        if tokens:
            ids[b, prompt_width:end] = torch.tensor(tokens, device=device)
            span[b, prompt_width:end] = torch.tensor(token_spans[: len(tokens)], device=device)
        attention[b, prompt_width:end] = 1
        region[b, prompt_width:end] = True
    return Side(ids, attention, region, region.clone(), span)


def paired_data_problems(name: str, student: nn.Module, datamodule: Any, teacher: nn.Module | None) -> list[str]:
    """The models against set-up paired data: each vocabulary against its own tokenizer, special
    ids, and positions for the rows of both sides (``name`` is the method's, for the messages)."""
    if not hasattr(datamodule, "teacher_split"):
        return [(f"method '{name}' distills across tokenizers: use paired data that also tokenises every row for the teacher "
                 "(data.name: shakespeare-paired or lm-dataset-paired, with data.teacher_tokenizer).")]
    problems = []
    sides = [("student", student, datamodule.tokenizer, datamodule.block_size)]
    if teacher is not None:
        longest = max(rows["teacher_input_ids"].shape[1] for rows in datamodule.paired.values())
        sides.append(("teacher", teacher, datamodule.teacher_tokenizer, longest))
    for role, model, tokenizer, length in sides:
        width = output_width(model)
        if width < len(tokenizer):
            problems.append(f"The {role}'s vocabulary ({width} logits) is smaller than its tokenizer's {len(tokenizer)} ids: "
                            f"set {role}.vocab_size >= {len(tokenizer)}, or pair the {role} with the tokenizer it was trained with.")
        for key in ("eos_token_id", "pad_token_id"):
            got, want = getattr(model.config, key, None), getattr(tokenizer, key)
            if got is not None and want is not None and got != want:
                problems.append(f"The {role}'s config.{key} is {got} but its tokenizer's is {want}: the {role} was built for another "
                                "tokenizer; rebuild it with this tokenizer's special ids or use its own tokenizer.")
        available = positions(model)
        if available is not None and available < length:
            fix = "data.block_size" if role == "student" else "data.teacher_block_size (longer rows are cut)"
            problems.append(f"The {role} has {available} positions but its rows are {length} tokens long: "
                            f"set {role}.n_positions >= {length} or a smaller {fix}.")
    return problems


def prepare_paired(method: DistillationMethod) -> Any:
    """Set up the paired data and check it against the models when fitting starts; returns the data module.

    Raises:
        RecipeError: every problem of `DistillationMethod.data_problems`, one line each.
    """
    datamodule = method.trainer.datamodule if method.trainer is not None else None
    if datamodule is None:
        raise RecipeError([f"method '{type(method).__name__}' needs paired text data (data.name: shakespeare-paired or lm-dataset-paired)."])
    datamodule.setup()
    problems = method.data_problems(datamodule, method.teacher.model if method.teacher is not None else None)
    if problems:
        raise RecipeError(problems)
    return datamodule


def text_widths(student: nn.Module, teacher: nn.Module, data: Any) -> tuple[int, int]:
    """``(student, teacher)`` logits that stand for text: each model's first ``len(tokenizer)``
    logits. A head padded past its tokenizer (a char model with 96 logits for 86 ids) has rows that
    decode to nothing; the cross-tokenizer losses leave them out, or the sorted-L1 term would match
    them against the other side's real tokens and push the model's mass onto them."""
    return min(output_width(student), len(data.tokenizer)), min(output_width(teacher), len(data.teacher_tokenizer))
