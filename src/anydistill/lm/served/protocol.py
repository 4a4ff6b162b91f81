r"""Wire formats of a served teacher, parsed and checked in one place (server and client both use it).

**OpenAI-compatible** (what ``vllm serve MODEL --max-logprobs K`` answers):
``POST /v1/completions`` with ``{"model", "prompt": [[ids...], ...], "max_tokens": 1,
"prompt_logprobs": k}``. Choice ``i`` answers prompt ``i``; its ``prompt_logprobs`` has one entry
per prompt token, the first ``null``, entry ``j`` mapping token ids (JSON string keys) to
``{"logprob", "rank", "decoded_token"}``: the top-k at position ``j`` plus the actual token
``prompt[j]`` when it is not among them (k + 1 keys). Entry ``j`` is
:math:`\log p(\cdot \mid x_{<j})`, i.e. the teacher's logits row ``j - 1``. ``GET /v1/models``
lists the served names and ``max_model_len``.

The same endpoint generates (what ``seq-kd`` asks of a teacher): ``{"model", "prompt": [[ids...],
...], "max_tokens": n, "temperature": t, "return_token_ids": true}`` continues each prompt by up to
n tokens, greedily at ``t = 0`` or sampled at t (``seed`` fixes the draw), or with beam search
(``"use_beam_search": true, "n": beams``: n choices per prompt, the best first), stopping at
``<eos>``. Choice ``i * n + j`` answers prompt ``i``; its ``token_ids`` are the generated ids, the
``<eos>`` included (vLLM's ``return_token_ids``), ``finish_reason`` ``stop`` at ``<eos>``.

**Binary extension** (our server only): ``POST /anydistill/v1/signals`` with JSON
``{"model", "input_ids": [B][L], "attention_mask": [B][L], "signal": "topk" | "adaptive" |
"hidden", ...options}`` answers a safetensors file (``application/octet-stream``) holding the
teacher's rows of ``logits[:, :-1]`` for the batch exactly as given (padding included, as the
signal caches store them): ``topk``: ``logprobs``/``indices`` ``[B*(L-1), k]`` and ``tail``;
``adaptive``: the ragged ``logprobs``/``indices`` ``[E]``, ``tail`` and ``offsets``; ``hidden``:
``hidden`` ``[B*(L-1), H]``. ``GET /anydistill/v1/head`` answers the teacher's LM head
(``weight`` ``[V, H]``, ``bias``) the same way.

Every response carries the teacher's fingerprint in the ``x-anydistill-fingerprint`` header (and in
the safetensors metadata). Nothing is ever unpickled: bodies are JSON or safetensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from anydistill.core.checks import is_finite_number, is_int

FINGERPRINT_HEADER = "x-anydistill-fingerprint"
SIGNALS_PATH = "/anydistill/v1/signals"
HEAD_PATH = "/anydistill/v1/head"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
SIGNALS = ("topk", "adaptive", "hidden")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ProtocolError(ValueError):
    """A request or response that does not follow the protocol: one line, and the HTTP status a
    server answers it with (400 malformed, 401 unauthorised, 404 unknown model, 413 too large,
    422 a signal the server was not started for)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------
# requests


@dataclass(frozen=True)
class SignalRequest:
    """A parsed binary request: ``input_ids``/``attention_mask`` ``[B, L]`` int64 and the signal's options."""

    input_ids: Tensor
    attention_mask: Tensor
    signal: str
    k: int = 32
    tail: bool = True
    kl_budget: float = 1e-3
    k_min: int = 1
    k_max: int | None = None
    dtype: str = "float16"


def signal_request_body(input_ids: Tensor, attention_mask: Tensor | None, signal: str, model: str, **options: Any) -> dict:
    """The JSON body of a binary request for the batch ``input_ids`` ``[B, L]`` (mask all ones if None)."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    return {"model": model, "input_ids": input_ids.tolist(), "attention_mask": mask.long().tolist(), "signal": signal, **options}


def _int_rows(value: Any, name: str) -> list[list[int]]:
    if not (isinstance(value, list) and value and all(isinstance(row, list) and row for row in value)):
        raise ProtocolError(f"'{name}' must be a non-empty list of non-empty lists of token ids.")
    if not all(is_int(x) for row in value for x in row):
        raise ProtocolError(f"'{name}' must hold integers only.")
    return value


def parse_signal_request(body: Any, *, model: str, vocab: int, max_tokens: int, signals: tuple[str, ...]) -> SignalRequest:
    """Check a binary request body against the served ``model`` (name), its ``vocab``, the token limit
    and the signals this server was started for; raise `ProtocolError` (one line) otherwise."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object.")
    _check_model(body.get("model"), model)
    signal = body.get("signal")
    if signal not in SIGNALS:
        raise ProtocolError(f"'signal' must be one of {', '.join(SIGNALS)}; got {signal!r}.")
    if signal not in signals:
        raise ProtocolError(f"this server was not started for signal {signal!r} (it serves {', '.join(signals)}): "
                            f"restart it with --signals {','.join((*signals, signal))}.", status=422)
    ids, mask = _int_rows(body.get("input_ids"), "input_ids"), _int_rows(body.get("attention_mask"), "attention_mask")
    width = len(ids[0])
    if any(len(row) != width for row in ids) or [len(r) for r in mask] != [len(r) for r in ids] or width < 2:
        raise ProtocolError("'input_ids' and 'attention_mask' must be rectangular [B, L] lists of the same shape, L >= 2.")
    _check_size(len(ids) * width, max_tokens)
    input_ids = torch.tensor(ids, dtype=torch.long)
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise ProtocolError(f"token ids must lie in [0, {vocab}) (the teacher's vocabulary).")
    options = {key: body[key] for key in ("k", "tail", "kl_budget", "k_min", "k_max", "dtype") if key in body}
    request = SignalRequest(input_ids, torch.tensor(mask, dtype=torch.long), signal, **options)
    _check_options(request, vocab)
    return request


def _check_options(request: SignalRequest, vocab: int) -> None:
    if not (is_int(request.k) and 1 <= request.k <= vocab):
        raise ProtocolError(f"'k' must be an integer in [1, {vocab}]; got {request.k!r}.")
    if not isinstance(request.tail, bool):
        raise ProtocolError(f"'tail' must be true or false; got {request.tail!r}.")
    if not (is_finite_number(request.kl_budget) and request.kl_budget > 0):
        raise ProtocolError(f"'kl_budget' must be a number > 0; got {request.kl_budget!r}.")
    k_max = vocab if request.k_max is None else request.k_max
    if not (is_int(request.k_min) and is_int(k_max) and 1 <= request.k_min <= k_max <= vocab):
        raise ProtocolError(f"'k_min' and 'k_max' must be integers with 1 <= k_min <= k_max <= {vocab}.")
    if request.dtype not in DTYPES:
        raise ProtocolError(f"'dtype' must be one of {', '.join(DTYPES)}; got {request.dtype!r}.")


def _check_model(asked: Any, served: str) -> None:
    if asked is not None and asked != served:
        raise ProtocolError(f"model {asked!r} is not served here (this server serves {served!r}).", status=404)


def _check_size(tokens: int, max_tokens: int) -> None:
    if tokens > max_tokens:
        raise ProtocolError(f"{tokens} tokens in one request, more than this server's limit of {max_tokens} "
                            "(--max-tokens-per-request): send smaller batches.", status=413)


@dataclass(frozen=True)
class CompletionRequest:
    """A parsed OpenAI-compatible request: the prompts (lists of ids) and either ``k`` of
    ``prompt_logprobs`` (scoring) or the generation settings (``k`` None)."""

    prompts: list[list[int]]
    k: int | None
    max_tokens: int = 1
    temperature: float = 0.0
    beams: int = 1
    seed: int = 0


def parse_completion_request(body: Any, *, model: str, vocab: int, max_tokens: int, max_logprobs: int) -> CompletionRequest:
    """Check a ``/v1/completions`` body for the subset served here: token-id prompts, and either
    ``prompt_logprobs`` with ``max_tokens`` 1 (scoring, as vLLM, which refuses 0 without ``echo``) or
    a generation (greedy, sampled or beam search; see the module docstring)."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object.")
    _check_model(body.get("model"), model)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, list) and prompt and all(is_int(x) for x in prompt) else prompt
    prompts = _int_rows(prompts, "prompt")
    if any(x < 0 or x >= vocab for p in prompts for x in p):
        raise ProtocolError(f"token ids must lie in [0, {vocab}) (the teacher's vocabulary).")
    k, new = body.get("prompt_logprobs"), body.get("max_tokens", 16)
    if k is None:
        return _generation_request(body, prompts, new, max_tokens)
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= min(max_logprobs, vocab)):
        raise ProtocolError(f"'prompt_logprobs' must be an integer in [1, {min(max_logprobs, vocab)}] (--max-logprobs); got {k!r}.")
    if body.get("max_tokens", 1) != 1:
        raise ProtocolError("this server scores prompts with 'prompt_logprobs' and 'max_tokens' 1, or generates without 'prompt_logprobs'.")
    _check_size(sum(len(p) for p in prompts), max_tokens)
    return CompletionRequest(prompts, k)


def _generation_request(body: dict, prompts: list[list[int]], new: Any, max_tokens: int) -> CompletionRequest:
    if not (is_int(new) and new >= 1):
        raise ProtocolError(f"'max_tokens' must be a positive integer; got {new!r}.")
    temperature, beam = body.get("temperature", 1.0), bool(body.get("use_beam_search", False))
    if not (is_finite_number(temperature) and temperature >= 0):
        raise ProtocolError(f"'temperature' must be a number >= 0; got {temperature!r}.")
    n, seed = body.get("n", 1), body.get("seed", 0)
    if not (is_int(n) and n >= 1) or (n > 1 and not beam):
        raise ProtocolError("'n' > 1 is served with 'use_beam_search' only (n beams, the best first): ask for one sample per prompt.")
    if not is_int(seed if seed is not None else 0):
        raise ProtocolError(f"'seed' must be an integer; got {seed!r}.")
    unsupported = [key for key, plain in (("top_k", (None, -1, 0)), ("top_p", (None, 1)), ("ignore_eos", (None, False)), ("stream", (None, False)))
                   if body.get(key) not in plain]
    if unsupported:
        raise ProtocolError(f"this server samples from the whole distribution and stops at <eos>: remove {', '.join(unsupported)}.")
    _check_size(sum(len(p) + new for p in prompts) * n, max_tokens)
    return CompletionRequest(prompts, None, int(new), 0.0 if beam else float(temperature), int(n) if beam else 1, int(seed or 0))


# ------------------------------------------------------------------------------------------------
# responses


def encode_tensors(tensors: dict[str, Tensor], fingerprint: str, **metadata: str) -> bytes:
    """safetensors bytes of ``tensors`` (contiguous CPU copies), the fingerprint in the metadata."""
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                            metadata={"fingerprint": fingerprint, **metadata})


def decode_tensors(data: bytes, keys: tuple[str, ...]) -> tuple[dict[str, Tensor], str]:
    """``(tensors, fingerprint)`` of a binary response; `ProtocolError` if it is not safetensors or lacks ``keys``."""
    try:
        tensors = load_safetensors(data)
        fingerprint = _metadata(data).get("fingerprint", "")
    except (SafetensorError, ValueError, KeyError) as error:
        raise ProtocolError(f"the response is not a safetensors file ({error}).") from None
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise ProtocolError(f"the response lacks {', '.join(missing)}.")
    return tensors, fingerprint


def _metadata(data: bytes) -> dict[str, str]:
    import json

    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size].decode()).get("__metadata__", {}) or {}


def completion_response(model: str, prompts: list[list[int]], logprobs: list[Tensor], indices: list[Tensor],
                        actual: list[Tensor], actual_ranks: list[Tensor], decode: Any = None) -> dict:
    """vLLM's ``/v1/completions`` answer for prompt scoring: per prompt ``i``, ``logprobs[i]``/``indices[i]``
    ``[n_i - 1, k]`` (sorted decreasingly) are the top-k of entries 1.., ``actual[i]`` ``[n_i - 1]`` the
    log-probability of each actual token and ``actual_ranks[i]`` its rank in the whole vocabulary
    (1 = most probable); ``decode(id) -> str`` fills ``decoded_token``."""
    import time
    import uuid

    choices = []
    for i, (prompt, values, ids, own, own_rank) in enumerate(zip(prompts, logprobs, indices, actual, actual_ranks)):
        entries: list[dict | None] = [None]
        for j, (row_values, row_ids) in enumerate(zip(values.tolist(), ids.tolist())):
            token = prompt[j + 1]
            entry = {}
            if token not in row_ids:  # vLLM puts the actual token first, with its rank in the vocabulary
                entry[str(token)] = _logprob(float(own[j]), int(own_rank[j]), token, decode)
            for rank, (value, index) in enumerate(zip(row_values, row_ids), start=1):
                entry[str(index)] = _logprob(value, rank, index, decode)
            entries.append(entry)
        choices.append({"index": i, "text": "", "logprobs": None, "finish_reason": "length", "stop_reason": None,
                        "prompt_logprobs": entries})
    tokens = sum(len(p) for p in prompts)
    return {"id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": {"prompt_tokens": tokens, "completion_tokens": len(prompts), "total_tokens": tokens + len(prompts)}}


def generation_response(model: str, prompts: list[list[int]], generated: list[list[int]], eos_token_id: int, decode: Any = None) -> dict:
    """vLLM's ``/v1/completions`` answer for a generation: choice ``c`` holds ``generated[c]`` (the
    ids after its prompt, ``<eos>`` included), ``beams = len(generated) / len(prompts)`` per prompt."""
    import time
    import uuid

    beams = len(generated) // max(len(prompts), 1)
    choices = [{"index": c, "text": decode(ids) if decode is not None else "", "token_ids": ids, "logprobs": None,
                "finish_reason": "stop" if ids and ids[-1] == eos_token_id else "length", "stop_reason": None,
                "prompt_token_ids": prompts[c // beams]} for c, ids in enumerate(generated)]
    tokens, made = sum(len(p) for p in prompts), sum(len(ids) for ids in generated)
    return {"id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": {"prompt_tokens": tokens, "completion_tokens": made, "total_tokens": tokens + made}}


def parse_generations(body: Any, prompts: int, beams: int, max_tokens: int) -> list[list[int]]:
    """The best continuation of each prompt (``token_ids`` of choice ``i * beams``) from a generation answer."""
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0)) if isinstance(body, dict) else []
    if len(choices) != prompts * beams:
        raise ProtocolError(f"the answer holds {len(choices)} choices for {prompts} prompts x {beams} beams.")
    best = []
    for choice in choices[::beams]:
        ids = choice.get("token_ids")
        if not isinstance(ids, list) or not all(is_int(t) for t in ids) or len(ids) > max_tokens:
            raise ProtocolError("a choice lacks 'token_ids' (up to max_tokens ids): the server must answer 'return_token_ids' "
                                "(vLLM >= 0.10.2, or anydistill serve-teacher).")
        best.append([int(t) for t in ids])
    return best


def _logprob(value: float, rank: int, token: int, decode: Any) -> dict:
    value = value if math.isfinite(value) else -9999.0  # vLLM's JSON for -inf
    return {"logprob": value, "rank": rank, "decoded_token": decode(token) if decode is not None else ""}


def parse_prompt_logprobs(choice: Any, k: int, length: int) -> tuple[Tensor, Tensor]:
    """``(logprobs [length - 1, k] float32, indices [length - 1, k] int64)`` from one choice of a
    ``/v1/completions`` answer for a prompt of ``length`` tokens: entries 1.. (entry 0 is ``null``),
    each cut to its k most probable tokens (vLLM adds the actual token when it is not among them)."""
    entries = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
    if not isinstance(entries, list) or len(entries) != length:
        got = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise ProtocolError(f"a choice's 'prompt_logprobs' must list one entry per prompt token ({length}); got {got}.")
    values = torch.empty(length - 1, k, dtype=torch.float32)
    indices = torch.empty(length - 1, k, dtype=torch.long)
    for j, entry in enumerate(entries[1:]):
        if not isinstance(entry, dict) or len(entry) < k:
            raise ProtocolError(f"prompt_logprobs entry {j + 1} holds fewer than k = {k} tokens: start the server with "
                                f"--max-logprobs >= {k}.")
        try:
            best = sorted(((float(v["logprob"]), int(t)) for t, v in entry.items()), reverse=True)[:k]
        except (TypeError, ValueError, KeyError):
            raise ProtocolError(f"prompt_logprobs entry {j + 1} is not a map of token id -> {{logprob, ...}}.") from None
        values[j] = torch.tensor([v for v, _ in best])
        indices[j] = torch.tensor([t for _, t in best])
    return values, indices


def tail_of(logprobs: Tensor) -> Tensor:
    """``[N]`` log of the mass outside each row's entries, ``log(1 - sum exp(logprobs))``, in fp64
    (``-inf`` when the entries hold all of it)."""
    mass = logprobs.double().exp().sum(-1)
    return torch.log1p(-mass.clamp(max=1.0))
