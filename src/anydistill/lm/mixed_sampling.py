r"""Teacher-mixed ancestral sampling (MiniLLM): each next token is drawn from
:math:`\tilde p = \alpha\, p + (1 - \alpha)\, q_\theta`, both models running with their KV caches."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def sample_mixed(student: nn.Module, teacher: nn.Module, prompts: Tensor, new_tokens: int, *, alpha: float,
                 vocab: int, temperature: float = 1.0, eos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor]:
    r"""Continue ``prompts`` [B, P] by ``new_tokens`` tokens drawn from the mixture

    .. math::

        \tilde p(\cdot \mid y_{<t}, x) = \alpha\, \mathrm{softmax}(z_p / T) + (1 - \alpha)\, \mathrm{softmax}(z_q / T)

    of the teacher's and the student's next-token distributions over the first ``vocab`` ids
    (``top_k = 0``, ``top_p = 1``, as MiniLLM's scripts), drawn with ``torch.multinomial`` from the
    global torch RNG (seeded and checkpointed by the engine). Both models run in eval mode (no
    dropout) and are put back in their former mode. Once a sequence has produced ``<eos>`` it is
    continued with ``<pad>``; the loop ends early when every sequence has.

    Returns:
        ``(sequences [B, P + new_tokens], completion_mask [B, P + new_tokens])`` as
        `anydistill.lm.common.generate`: the mask is True on generated tokens up to and including
        the first ``<eos>``.
    """
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    batch, prompt_len = prompts.shape
    ids = prompts
    finished = torch.zeros(batch, dtype=torch.bool, device=prompts.device)
    mask = torch.zeros(batch, prompt_len + new_tokens, dtype=torch.bool, device=prompts.device)
    caches: list = [None, None]
    step_input = prompts
    for step in range(new_tokens):
        probs = None
        for k, (model, weight) in enumerate(((student, 1.0 - alpha), (teacher, alpha))):
            if weight == 0:
                continue
            logits, caches[k] = cached_step(model, step_input, caches[k], ids.shape[1])
            part = weight * F.softmax(logits[:, :vocab].float() / temperature, dim=-1)
            probs = part if probs is None else probs + part
        token = torch.multinomial(probs, num_samples=1).squeeze(1)
        # Finished sequences carry padding (masked out of every loss; harmless under causal attention).
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        mask[:, prompt_len + step] = ~finished
        finished = finished | (token == eos_token_id)
        ids = torch.cat([ids, token[:, None]], dim=1)
        step_input = token[:, None]
        if bool(finished.all()):
            break
    if ids.shape[1] < prompt_len + new_tokens:
        ids = torch.cat([ids, ids.new_full((batch, prompt_len + new_tokens - ids.shape[1]), pad_token_id)], dim=1)
    student.train(modes[0])
    teacher.train(modes[1])
    return ids, mask


def cached_step(model: nn.Module, input_ids: Tensor, cache: object, length: int) -> tuple[Tensor, object]:
    """One incremental forward of a transformers causal LM: the last position's logits [B, V] and
    the updated KV cache. ``length`` is the sequence length so far, ``input_ids`` included.
    transformers 5 names the cache ``cache``; earlier versions ``past_key_values``."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    mask = torch.ones(input_ids.shape[0], length, dtype=torch.long, device=input_ids.device)
    out = model(input_ids=input_ids, attention_mask=mask, use_cache=True, **{name: cache})
    return out.logits[:, -1], getattr(out, name)
