r"""A causal LM seen as ``trunk -> LM head``: its last hidden states and head weights, for the fused
losses of :mod:`anydistill.lm.fused_head`, which never form the ``[B, L, V]`` logits.

For a transformers causal LM, ``model(ids).logits == base_model(ids).last_hidden_state @ W.T + b``
with ``(W, b)`` = ``get_output_embeddings()``, for most architectures (GPT-2, Llama, Qwen,
Mistral...). Some rescale the logits after the head (Gemma-2's final soft-cap, Cohere's
``logit_scale``, Granite's ``logits_scaling``), a PEFT adapter may sit on the head, and sharded
strategies (FSDP, DeepSpeed ZeRO-3) gather weights only inside the wrapped model's own forward.
Rather than list architectures, :func:`head_problem` runs the model once on a short input and
compares the head path with the model's own logits: any model it does not reproduce keeps the
unfused path, with the reason logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from anydistill.lm.common import frozen_pass

# `fused_head: auto` fuses from this vocabulary on: below it the [B, L, V] logits are small, so
# there is little memory to save, while the chunked path adds per-chunk work (at V = 96 a run of the
# TRL comparison with the fused path forced gave 1.20x TRL's tokens/s against 1.42x with full
# logits, but that run also shared the machine with another job: not a controlled comparison).
FUSED_MIN_VOCAB = 4096

# Relative agreement required between `hidden @ W.T + b` and the model's logits (fp32 rounding of
# a different matmul order is ~1e-6; a soft-cap or a logit scale is orders of magnitude more).
HEAD_TOLERANCE = 1e-4


@dataclass
class Head:
    """An LM head as tensors: ``weight`` [V, H] and ``bias`` [V] or None, sliced to ``vocab`` rows."""

    weight: Tensor
    bias: Tensor | None


def lm_head(model: nn.Module, vocab: int) -> Head:
    """The model's output projection restricted to the first ``vocab`` rows (the shared vocabulary;
    a padded head keeps its extra rows out of the loss, as the unfused path slices its logits)."""
    linear = model.get_output_embeddings()
    bias = linear.bias[:vocab] if getattr(linear, "bias", None) is not None else None
    return Head(weight=linear.weight[:vocab], bias=bias)


def last_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The inputs of the LM head for each next-token prediction: ``[B, L-1, H]`` (the trunk's
    ``last_hidden_state[:, :-1]``, final norm included), aligned with ``causal_logits``."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state[:, :-1]


def head_problem(model: nn.Module, vocab: int, *, strategy: str = "") -> str | None:
    """Why the fused path cannot stand in for ``model``'s logits, or None when it can.

    Checks that the model exposes ``get_output_embeddings()`` and ``base_model``, that the strategy
    does not shard weights, and that ``last_hidden @ W.T + b`` reproduces the model's own logits to
    ``HEAD_TOLERANCE`` (relative) on an 8-token input.
    """
    if any(name in strategy.lower() for name in ("fsdp", "deepspeed")):
        return f"the {strategy} strategy gathers sharded weights only inside the model's own forward"
    linear = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(getattr(linear, "weight", None), Tensor) or getattr(model, "base_model", model) is model:
        return "the model exposes no separate LM head (get_output_embeddings() and base_model)"
    device = linear.weight.device
    ids = torch.arange(8, device=device).remainder(vocab).unsqueeze(0)
    ones = torch.ones_like(ids)
    was_training = model.training
    model.eval()  # dropout off for the comparison
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=ones, use_cache=False).logits[:, :-1, :vocab].float()
            head = lm_head(model, vocab)
            fused = nn.functional.linear(last_hidden(model, ids, ones), head.weight, head.bias).float()
    except Exception as error:  # any architecture whose trunk cannot be called this way
        return f"its trunk could not be run alone ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    if fused.shape != logits.shape:
        return f"hidden @ head gives {tuple(fused.shape)}, the model's logits {tuple(logits.shape)}"
    error = ((fused - logits).abs().max() / logits.abs().max().clamp_min(1e-12)).item()
    if error > HEAD_TOLERANCE:
        return (f"its logits are not hidden @ head (relative difference {error:.1e}: a soft-cap, logit scale "
                "or adapter after the head)")
    return None


def teacher_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The frozen teacher's head inputs ``[B, L-1, Ht]`` (one trunk forward, no graph), the fused
    counterpart of `lm.common.teacher_logits`."""
    return frozen_pass(model, last_hidden, input_ids, attention_mask)


def choose_fused(wanted: bool | str, models: dict[str, nn.Module], vocab: int, strategy: str = "") -> tuple[bool, str | None]:
    """``(use the fused path, why not)``: fused when ``wanted`` (True, or ``"auto"`` with
    ``vocab >= FUSED_MIN_VOCAB``) and every model in ``models`` (role -> model, e.g. the student
    and an online teacher) passes :func:`head_problem`."""
    if not wanted or (wanted == "auto" and vocab < FUSED_MIN_VOCAB):
        return False, None
    for role, model in models.items():
        if (problem := head_problem(model, vocab, strategy=strategy)) is not None:
            return False, f"{role}: {problem}"
    return True, None
