"""`ServedTeacher`: the teacher of a run when it lives behind a URL (``teacher: {server: ...}``).

It answers what the methods ask a teacher for, per batch ``input_ids``/``attention_mask`` ``[B, L]``:
the rows of ``logits[:, :-1]`` as a top-k `SparseTeacher` (``B * (L - 1)`` rows, row-major, as the
top-k cache gives them), adaptive-k rows, or last hidden states with the head fetched once. Over
``api: openai`` (vLLM, SGLang's OpenAI server, ours) only top-k exists; ``api: binary`` (ours)
serves all three as safetensors.

Connection reuse and timeouts come from httpx; a failed connection or a 5xx is retried with
exponential backoff, then stops the run with one line naming the server. Every answer's
fingerprint must be the one seen at connection: a server restarted with another checkpoint stops
the run instead of training on a different teacher.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import torch
from torch import Tensor

from anydistill.core.errors import AnydistillError
from anydistill.core.recipe import NonNegativeInt, PositiveFloat, PositiveInt
from anydistill.lm.adaptive_topk import RaggedTeacher
from anydistill.lm.head import Head
from anydistill.lm.served.protocol import (
    COMPLETIONS_PATH,
    FINGERPRINT_HEADER,
    HEAD_PATH,
    MODELS_PATH,
    SIGNALS_PATH,
    ProtocolError,
    decode_tensors,
    parse_generations,
    parse_prompt_logprobs,
    signal_request_body,
    tail_of,
)
from anydistill.lm.topk import SparseTeacher


PREFETCHED = 4  # requests sent ahead and kept for their batch (Lightning fetches one batch ahead)


class ServerError(AnydistillError):
    """The teacher server cannot be used: unreachable, refusing, or serving another checkpoint (one line)."""


class ServedTeacher:
    """A teacher served over HTTP.

    Args:
        server: the server's base address (``http://127.0.0.1:8000``).
        api: ``openai`` (``/v1/completions`` with ``prompt_logprobs``: vLLM's API) or ``binary`` (ours).
        model: the served model name (None: the first of ``/v1/models``).
        signal: ``topk``, ``adaptive`` (binary only) or ``hidden`` (binary only).
        topk: k of the top-k rows (vLLM needs ``--max-logprobs >= k``).
        kl_budget, k_min, k_max: the adaptive rows' settings (`lm.adaptive_topk`).
        dtype: the binary rows' storage (float16 halves the payload).
        vocab_size: the teacher's vocabulary when the server does not say it (vLLM does not).
        token_file: a file holding the bearer token the server requires (``--token-file``), if any.
        timeout: seconds per request; retries, backoff: tries after a failure and the first wait (doubling).
        prefetch: ask for the next training batch's rows while the student steps (`lm.served.use.pipeline`).
    """

    def __init__(self, server: str, *, api: Literal["openai", "binary"] = "binary", model: str | None = None,
                 signal: Literal["topk", "adaptive", "hidden"] = "topk", topk: PositiveInt = 32, kl_budget: PositiveFloat = 1e-3,
                 k_min: PositiveInt = 1, k_max: PositiveInt | None = None, dtype: Literal["float16", "bfloat16", "float32"] = "float16",
                 vocab_size: PositiveInt | None = None, token_file: str | None = None, timeout: PositiveFloat = 120.0,
                 retries: NonNegativeInt = 4, backoff: PositiveFloat = 0.5, prefetch: bool = True):
        try:
            import httpx
        except ImportError:
            raise ServerError("a served teacher needs the package 'httpx': pip install 'anydistill[served]'.") from None

        self.url, self.api, self.model_name, self.signal = server.rstrip("/"), api, model, signal
        self.topk, self.kl_budget, self.k_min, self.k_max, self.dtype = topk, kl_budget, k_min, k_max, dtype
        self.vocab_size, self.retries, self.backoff, self.prefetch_enabled = vocab_size, retries, backoff, prefetch
        token = read_token(token_file) if token_file else None
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.name = f"served:{self.url}"
        self.spec = ""
        self.model = None  # no module in this process: methods branch on `served`
        self.served_fingerprint: str | None = None
        self.card: dict = {}
        self._head: Head | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.prefetched = self.prefetch_hits = 0  # requests sent ahead, and those a step used
        self.received_bytes = self.served_rows = 0  # answer bodies of `rows`, and the logits rows they held
        self._pending: OrderedDict[Any, Future] = OrderedDict()  # batch key -> its request in flight

    # -- connection -----------------------------------------------------------------------------

    def connect(self) -> dict:
        """Read ``/v1/models`` (the model card; our server adds fingerprint, vocabulary and signals)
        and check the settings against it. Raises `ServerError` (one line) when unusable."""
        cards = self._request("GET", MODELS_PATH).json().get("data") or []
        if not cards:
            raise ServerError(f"teacher server {self.url} lists no model at {MODELS_PATH}.")
        names = [c.get("id") for c in cards]
        if self.model_name is None:
            self.model_name = names[0]
        elif self.model_name not in names:
            raise ServerError(f"teacher server {self.url} does not serve model {self.model_name!r} (it serves {', '.join(map(str, names))}): "
                               "fix teacher.model.")
        self.card = next(c for c in cards if c.get("id") == self.model_name)
        ours = self.card.get("anydistill") or {}
        if ours:
            self.served_fingerprint = ours["fingerprint"]
            if self.vocab_size is not None and self.vocab_size != ours["vocab_size"]:
                raise ServerError(f"teacher server {self.url} serves a vocabulary of {ours['vocab_size']}, not teacher.vocab_size "
                                   f"{self.vocab_size}: fix or remove teacher.vocab_size.")
            self.vocab_size = ours["vocab_size"]
            if self.api == "binary" and self.signal not in ours.get("signals", []):
                raise ServerError(f"teacher server {self.url} was not started for signal {self.signal!r} (it serves "
                                   f"{', '.join(ours.get('signals', []))}): restart it with --signals {self.signal}.")
        elif self.api == "binary":
            raise ServerError(f"teacher server {self.url} is not an anydistill server (its {MODELS_PATH} has no 'anydistill' field): "
                               "use api: openai for vLLM.")
        elif self.vocab_size is None:
            raise ServerError(f"teacher server {self.url} does not say its vocabulary size (vLLM does not): set teacher.vocab_size.")
        if self.signal != "topk" and self.api == "openai":
            raise ServerError(f"teacher.signal {self.signal!r} needs api: binary (the OpenAI-compatible API serves top-k only).")
        return self.card

    def to(self, device: Any) -> ServedTeacher:
        """Nothing to move: the rows are moved to each batch's device as they arrive (`Teacher.to`'s role)."""
        return self

    def fingerprint(self) -> str:
        """Our server's teacher fingerprint; for another server (vLLM), a hash of its URL-independent
        identity: the served name and the vocabulary size (all such a server says about its weights)."""
        if not self.card:
            self.connect()
        if self.served_fingerprint is not None:
            return self.served_fingerprint
        return hashlib.sha256(f"openai|{self.model_name}|{self.vocab_size}".encode()).hexdigest()

    def _request(self, method: str, path: str, **kwargs: Any):
        import httpx

        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                failure = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 400:
                    self._check_fingerprint(response)
                    return response
                failure = _message(response)
                if response.status_code < 500:  # the request is wrong: trying again would not help
                    raise ServerError(f"teacher server {self.url} refused {method} {path}: {failure}")
            if attempt < self.retries:
                time.sleep(wait)
                wait *= 2
        raise ServerError(f"teacher server {self.url} did not answer {method} {path} after {self.retries + 1} tries ({failure}): "
                           "start it (anydistill serve-teacher ... / vllm serve ...) or fix teacher.server.")

    def _check_fingerprint(self, response: Any) -> None:
        seen = response.headers.get(FINGERPRINT_HEADER)
        if seen is not None and self.served_fingerprint is not None and seen != self.served_fingerprint:
            raise ServerError(f"teacher server {self.url} now serves another checkpoint (fingerprint {self.served_fingerprint[:12]} "
                               f"-> {seen[:12]}): restart it with the run's teacher, or start a new run.")

    # -- signals --------------------------------------------------------------------------------

    def rows(self, input_ids: Tensor, attention_mask: Tensor | None) -> SparseTeacher | Tensor:
        """The batch's teacher signal: a `SparseTeacher` of ``B * (L - 1)`` rows (``topk``,
        ``adaptive``) or hidden states ``[B, L - 1, H]`` in the head's dtype (``hidden``), on the CPU."""
        if self.api == "openai":
            return self._openai_topk(input_ids, attention_mask)
        options = {"topk": {"k": self.topk, "dtype": self.dtype},
                   "adaptive": {"kl_budget": self.kl_budget, "k_min": self.k_min, "k_max": self.k_max},
                   "hidden": {"dtype": self.dtype}}[self.signal]
        body = signal_request_body(input_ids, attention_mask, self.signal, self.model_name, **options)
        keys = {"topk": ("logprobs", "indices"), "adaptive": ("logprobs", "indices", "tail", "offsets"), "hidden": ("hidden",)}[self.signal]
        content = self._request("POST", SIGNALS_PATH, json=body).content
        self.received_bytes += len(content)
        self.served_rows += input_ids.shape[0] * (input_ids.shape[1] - 1)
        tensors, _ = self._decode(content, keys)
        if self.signal == "hidden":  # in the head's dtype, ready for hidden @ W.T + b (as the hidden cache's rows)
            return tensors["hidden"].reshape(input_ids.shape[0], input_ids.shape[1] - 1, -1).to(self.head().weight.dtype)
        if self.signal == "adaptive":
            ragged = RaggedTeacher(tensors["logprobs"], tensors["indices"], tensors["tail"], tensors["offsets"])
            return ragged.padded(torch.arange(ragged.num_tokens), self.vocab_size)
        return SparseTeacher(tensors["logprobs"], tensors["indices"].long(), tensors.get("tail"))

    def generate(self, prompts: Tensor, new_tokens: int, *, do_sample: bool, temperature: float = 1.0, num_beams: int = 1,
                 eos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor]:
        """The teacher's continuations of ``prompts`` [B, P] from ``/v1/completions`` (vLLM's, with
        ``return_token_ids``, or ours), laid out as `lm.common.generate` returns them:
        ``(sequences [B, P + new_tokens], completion_mask [B, P + new_tokens])`` on the CPU. Sampling
        is seeded by a draw from the global torch RNG (which the engine seeds and checkpoints)."""
        body: dict[str, Any] = {"model": self.model_name, "prompt": prompts.cpu().tolist(), "max_tokens": new_tokens,
                                "return_token_ids": True, "skip_special_tokens": False}
        if do_sample:
            body.update(temperature=temperature, seed=int(torch.randint(0, 2**31 - 1, ())))
        elif num_beams > 1:
            body.update(temperature=0.0, use_beam_search=True, n=num_beams)
        else:
            body.update(temperature=0.0)
        try:
            generated = parse_generations(self._request("POST", COMPLETIONS_PATH, json=body).json(), prompts.shape[0],
                                          num_beams if not do_sample else 1, new_tokens)
        except ProtocolError as error:
            raise ServerError(f"teacher server {self.url}: {error}") from None
        batch, width = prompts.shape[0], prompts.shape[1] + new_tokens
        sequences = torch.full((batch, width), pad_token_id, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.bool)
        sequences[:, : prompts.shape[1]] = prompts.cpu()
        for row, ids in enumerate(generated):
            if eos_token_id in ids:  # what follows a first <eos> is padding (a server that ignored it)
                ids = ids[: ids.index(eos_token_id) + 1]
            sequences[row, prompts.shape[1] : prompts.shape[1] + len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, prompts.shape[1] : prompts.shape[1] + len(ids)] = True
        return sequences, mask

    def head(self) -> Head:
        """The teacher's LM head (``hidden`` signal), fetched once."""
        if self._head is None:
            tensors, _ = self._decode(self._request("GET", HEAD_PATH).content, ("weight",))
            self._head = Head(tensors["weight"], tensors.get("bias"))
        return self._head

    def _decode(self, data: bytes, keys: tuple[str, ...]) -> tuple[dict[str, Tensor], str]:
        try:
            return decode_tensors(data, keys)
        except ProtocolError as error:
            raise ServerError(f"teacher server {self.url}: {error}") from None

    def _openai_topk(self, input_ids: Tensor, attention_mask: Tensor | None) -> SparseTeacher:
        """Top-k rows from ``/v1/completions``: each row's attended tokens are one prompt; entry ``j``
        of its ``prompt_logprobs`` fills logits row ``p_{j-1}`` (the attended positions ``p``); the
        other rows (padding, a final attended position) hold a placeholder no loss reads."""
        batch, width = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.cpu()
        prompts, positions = [], []
        for row, row_mask in zip(input_ids.cpu().tolist(), mask.tolist()):
            where = [t for t, m in enumerate(row_mask) if m]
            if where and where[-1] - where[0] + 1 != len(where):
                raise ServerError("a served teacher over api: openai needs each row's attended tokens to be contiguous "
                                   "(left or right padding only).")
            prompts.append([row[t] for t in where])
            positions.append(where)
        body = {"model": self.model_name, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": self.topk}
        response = self._request("POST", COMPLETIONS_PATH, json=body)
        self.received_bytes += len(response.content)
        self.served_rows += batch * (width - 1)
        choices = sorted(response.json().get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != batch:
            raise ServerError(f"teacher server {self.url} answered {len(choices)} choices for {batch} prompts.")
        logprobs = torch.zeros(batch * (width - 1), self.topk, dtype=torch.float32)
        indices = torch.zeros(batch * (width - 1), self.topk, dtype=torch.long)
        tail = torch.full((batch * (width - 1),), float("-inf"))
        logprobs[:, 1:] = float("-inf")  # placeholder rows: all mass on id 0
        for b, (choice, prompt, where) in enumerate(zip(choices, prompts, positions)):
            if len(prompt) < 2:
                continue
            try:
                values, ids = parse_prompt_logprobs(choice, self.topk, len(prompt))
            except ProtocolError as error:
                raise ServerError(f"teacher server {self.url}: {error}") from None
            rows = torch.tensor(where[:-1]) + b * (width - 1)
            logprobs[rows], indices[rows], tail[rows] = values, ids, tail_of(values).float()
        if self.vocab_size is not None and int(indices.max()) >= self.vocab_size:
            raise ServerError(f"teacher server {self.url} answered token ids >= teacher.vocab_size {self.vocab_size}: fix teacher.vocab_size.")
        return SparseTeacher(logprobs, indices, tail)

    # -- pipelining -----------------------------------------------------------------------------

    def prefetch(self, key: Any, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        """Ask for a batch's rows in the background (the next batch, while the student steps); at most
        `PREFETCHED` requests are kept, the oldest dropped."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="served-teacher")
        self._pending[key] = self._pool.submit(self.rows, input_ids.cpu(), None if attention_mask is None else attention_mask.cpu())
        while len(self._pending) > PREFETCHED:
            self._pending.popitem(last=False)
        self.prefetched += 1

    def rows_for(self, key: Any, input_ids: Tensor, attention_mask: Tensor | None) -> SparseTeacher | Tensor:
        """`rows`, taken from the prefetched request for ``key`` when there is one."""
        future = self._pending.pop(key, None)
        if future is not None:
            self.prefetch_hits += 1
            return future.result()
        return self.rows(input_ids, attention_mask)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.http.close()


def read_token(path: str) -> str:
    """The bearer token in the file ``path`` (surrounding whitespace removed); `ServerError` if unreadable or empty."""
    from pathlib import Path

    try:
        token = Path(path).read_text().strip()
    except OSError as error:
        raise ServerError(f"cannot read the token file '{path}' ({type(error).__name__}): fix teacher.token_file / --token-file.") from None
    if not token:
        raise ServerError(f"the token file '{path}' is empty: write the bearer token in it.")
    return token


def _message(response: Any) -> str:
    """The one line of an error answer (vLLM's ``{"error": {"message"}}``, FastAPI's ``{"detail"}``)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return f"HTTP {response.status_code}: {error['message']}"
    return f"HTTP {response.status_code}: {body.get('detail', body) if isinstance(body, dict) else body}"
