"""``anydistill serve-teacher``: a local causal-LM checkpoint behind the served-teacher protocol
(:mod:`.protocol`), for a CPU, or a GPU without vLLM.

`TeacherService` is the computation (no HTTP: testable alone); `create_app` puts it behind a
Starlette app, `serve` runs that with uvicorn. Safe to leave running: it binds 127.0.0.1 unless told
otherwise, reads JSON and writes JSON or safetensors only (nothing is unpickled), answers a malformed
or oversized request with a 4xx and one line and goes on serving, and with a token file it requires
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from anydistill.core.teacher import Teacher
from anydistill.lm.adaptive_topk import adaptive_sparsify
from anydistill.lm.common import causal_logits, generate, teacher_logits
from anydistill.lm.head import head_problem, lm_head, teacher_hidden
from anydistill.lm.teacher_kernels import fuse_teacher_activations
from anydistill.lm.served.protocol import (
    COMPLETIONS_PATH,
    DTYPES,
    FINGERPRINT_HEADER,
    HEAD_PATH,
    MODELS_PATH,
    SIGNALS,
    SIGNALS_PATH,
    CompletionRequest,
    ProtocolError,
    SignalRequest,
    completion_response,
    encode_tensors,
    generation_response,
    parse_completion_request,
    parse_signal_request,
)
from anydistill.lm.topk import sparsify
from anydistill.lm.vocab import output_width

log = logging.getLogger(__name__)


class TeacherService:
    """A frozen causal LM answering the protocol's requests, one at a time (a lock: the model's
    threads are the parallelism).

    Args:
        teacher: the frozen teacher (its fingerprint is sent with every answer).
        name: the served model name (``/v1/models``'s ``id``; requests naming another get a 404).
        max_tokens: tokens per request above which a request is refused (413).
        max_logprobs: the largest ``prompt_logprobs`` k (vLLM's ``--max-logprobs``).
        signals: the binary signals served (``hidden`` needs a head that reproduces the logits).
        tokenizer: optional, fills ``decoded_token``.
    """

    def __init__(self, teacher: Teacher, *, name: str, max_tokens: int = 65536, max_logprobs: int = 64,
                 signals: tuple[str, ...] = SIGNALS, tokenizer: Any = None):
        self.teacher, self.name, self.max_tokens, self.max_logprobs = teacher, name, max_tokens, max_logprobs
        self.vocab = output_width(teacher.model)
        if "hidden" in signals:
            why = head_problem(teacher.model, self.vocab)
            if why:
                raise ValueError(f"serve-teacher: --signals hidden needs an LM head that reproduces the logits; {why}. "
                                 "Serve topk/adaptive only.")
        self.signals, self.tokenizer = tuple(signals), tokenizer
        fuse_teacher_activations(teacher.model)  # as an in-process teacher runs (lm.common.prepare): same numbers
        self.fingerprint = teacher.fingerprint()
        self.positions = getattr(teacher.model.config, "max_position_embeddings", None) or getattr(teacher.model.config, "n_positions", None)
        self.lock = threading.Lock()

    # -- answers --------------------------------------------------------------------------------

    def models(self) -> dict:
        """``/v1/models``: vLLM's shape, plus an ``anydistill`` field (fingerprint, vocabulary, signals)."""
        card = {"id": self.name, "object": "model", "created": int(time.time()), "owned_by": "anydistill", "root": self.name,
                "parent": None, "max_model_len": self.positions,
                "anydistill": {"fingerprint": self.fingerprint, "vocab_size": self.vocab, "signals": list(self.signals),
                               "max_tokens_per_request": self.max_tokens}}
        return {"object": "list", "data": [card]}

    def signal(self, body: Any) -> bytes:
        """A binary request's safetensors answer (`protocol.SignalRequest`)."""
        request = parse_signal_request(body, model=self.name, vocab=self.vocab, max_tokens=self.max_tokens, signals=self.signals)
        with self.lock:
            tensors = self._signal_tensors(request)
        return encode_tensors(tensors, self.fingerprint, signal=request.signal)

    def _signal_tensors(self, request: SignalRequest) -> dict[str, torch.Tensor]:
        dtype = DTYPES[request.dtype]
        if request.signal == "hidden":
            hidden = teacher_hidden(self.teacher.model, request.input_ids, request.attention_mask)
            return {"hidden": hidden.reshape(-1, hidden.shape[-1]).to(dtype)}
        logits = teacher_logits(self.teacher, request.input_ids, request.attention_mask, self.vocab)
        if request.signal == "topk":
            index_dtype = torch.int32
            sparse = sparsify(logits, request.k, request.tail, dtype=dtype, index_dtype=index_dtype)
            tensors = {"logprobs": sparse.logprobs, "indices": sparse.indices}
            return {**tensors, "tail": sparse.tail_logprob} if sparse.tail_logprob is not None else tensors
        k_max = self.vocab if request.k_max is None else request.k_max
        ragged, _ = adaptive_sparsify(logits, request.kl_budget, request.k_min, k_max)
        return {"logprobs": ragged.logprobs, "indices": ragged.indices, "tail": ragged.tail_logprob, "offsets": ragged.offsets}

    def head(self) -> bytes:
        """The teacher's LM head as safetensors (``weight`` [V, H], ``bias`` [V] if any)."""
        if "hidden" not in self.signals:
            raise ProtocolError("this server was not started for signal 'hidden' (its head is served with it): "
                                "restart it with --signals including hidden.", status=422)
        head = lm_head(self.teacher.model, self.vocab)
        tensors = {"weight": head.weight.detach()}
        if head.bias is not None:
            tensors["bias"] = head.bias.detach()
        return encode_tensors(tensors, self.fingerprint, signal="head")

    def completions(self, body: Any) -> dict:
        """``/v1/completions``: prompt scoring with ``prompt_logprobs``, or a generation (vLLM's answer shapes)."""
        request = parse_completion_request(body, model=self.name, vocab=self.vocab, max_tokens=self.max_tokens,
                                           max_logprobs=self.max_logprobs)
        if request.k is None:
            with self.lock:
                generated = self._generate(request)
            decode = self.tokenizer.decode if self.tokenizer is not None else None
            return generation_response(self.name, request.prompts, generated, self.special_ids()[0], decode=decode)
        with self.lock:
            parts = self._prompt_logprobs(request)
        decode = (lambda token: self.tokenizer.decode([token])) if self.tokenizer is not None else None
        return completion_response(self.name, request.prompts, *parts, decode=decode)

    def special_ids(self) -> tuple[int, int]:
        """``(eos, pad)`` ids of the teacher (its config, else its tokenizer's; pad falls back to eos)."""
        config = self.teacher.model.config
        eos = getattr(config, "eos_token_id", None)
        eos = eos if eos is not None else getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            raise ProtocolError("this teacher has no <eos> id (config.eos_token_id), so it cannot generate: serve a folder with a tokenizer.",
                                status=422)
        pad = getattr(config, "pad_token_id", None)
        return eos, pad if pad is not None else eos

    def _generate(self, request: CompletionRequest) -> list[list[int]]:
        """Each prompt's continuations (``request.beams`` of them, the best first), cut after ``<eos>``,
        as `lm.common.generate` makes them; prompts of one length are continued together."""
        eos, pad = self.special_ids()
        model, answers = self.teacher.model, {}
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(request.prompts):
            by_length.setdefault(len(prompt), []).append(i)
        for rows in by_length.values():
            prompts = torch.tensor([request.prompts[i] for i in rows], device=model.device)
            with torch.random.fork_rng(devices=[]):  # the request's seed, never the server's own stream
                torch.manual_seed(request.seed)
                ids, mask = generate(model, prompts, request.max_tokens, do_sample=request.temperature > 0, temperature=request.temperature or 1.0,
                                     num_beams=request.beams, eos_token_id=eos, pad_token_id=pad, beams_returned=request.beams)
            for position, (sequence, keep) in enumerate(zip(ids.cpu(), mask.cpu())):
                answers[rows[position // request.beams] * request.beams + position % request.beams] = sequence[keep].tolist()
        return [answers[c] for c in range(len(request.prompts) * request.beams)]

    def _prompt_logprobs(self, request: CompletionRequest) -> tuple[list, list, list, list]:
        """Per prompt: top-k values and ids [n-1, k], the actual tokens' log-probs and ranks [n-1]."""
        width = max(len(p) for p in request.prompts)
        ids = torch.zeros(len(request.prompts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, prompt in enumerate(request.prompts):  # right padding: a causal model's rows are unchanged by it
            ids[i, : len(prompt)] = torch.tensor(prompt)
            mask[i, : len(prompt)] = 1
        model = self.teacher.model
        with torch.inference_mode():
            logits = causal_logits(model, ids.to(model.device), mask.to(model.device))[..., : self.vocab]
        values, indices, actual, ranks = [], [], [], []
        for i, prompt in enumerate(request.prompts):
            log_p = F.log_softmax(logits[i, : len(prompt) - 1].float(), dim=-1).cpu()
            top = log_p.topk(request.k, dim=-1)
            own = log_p.gather(1, torch.tensor(prompt[1:])[:, None])
            values.append(top.values)
            indices.append(top.indices)
            actual.append(own[:, 0])
            ranks.append(1 + (log_p > own).sum(-1))
        return values, indices, actual, ranks


def create_app(service: TeacherService, token: str | None = None):
    """The ASGI app (Starlette): ``/v1/models``, ``/v1/completions``, and the binary ``/anydistill/v1/*``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    headers = {FINGERPRINT_HEADER: service.fingerprint}

    def refused(error: ProtocolError) -> JSONResponse:
        # vLLM's error shape (0.33): {"error": {"message", "type", "code"}}.
        return JSONResponse({"error": {"message": str(error), "type": "BadRequestError", "code": error.status}},
                            status_code=error.status, headers=headers)

    async def json_body(request: Request) -> Any:
        raw = await request.body()
        limit = 64 + 32 * service.max_tokens  # ids and mask as JSON digits: a body far past the token limit is refused unparsed
        if len(raw) > limit:
            raise ProtocolError(f"a request body of {len(raw)} bytes is larger than this server accepts ({limit}): send smaller batches.",
                                status=413)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError("the request body is not JSON.") from None

    def endpoint(answer, *, body: bool, binary: bool):
        async def handle(request: Request) -> Response:
            try:
                if token is not None:
                    given = request.headers.get("authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                        raise ProtocolError("missing or wrong bearer token (Authorization: Bearer <token>).", status=401)
                result = await run_in_threadpool(answer, await json_body(request)) if body else await run_in_threadpool(answer)
            except ProtocolError as error:
                return refused(error)
            if binary:
                return Response(result, media_type="application/octet-stream", headers=headers)
            return JSONResponse(result, headers=headers)

        return handle

    return Starlette(routes=[
        Route(MODELS_PATH, endpoint(service.models, body=False, binary=False), methods=["GET"]),
        Route(COMPLETIONS_PATH, endpoint(service.completions, body=True, binary=False), methods=["POST"]),
        Route(SIGNALS_PATH, endpoint(service.signal, body=True, binary=True), methods=["POST"]),
        Route(HEAD_PATH, endpoint(service.head, body=False, binary=True), methods=["GET"]),
    ])


def load_service(path: str, *, name: str | None, max_tokens: int, max_logprobs: int, signals: tuple[str, ...], dtype: str = "float32",
                 device: str = "cpu") -> TeacherService:
    """A `TeacherService` for a ``save_pretrained`` folder (model and tokenizer read locally)."""
    from anydistill.models.hf_causal_lm import folder_problem

    problem = folder_problem(path)
    if problem:
        raise ValueError(f"serve-teacher: the teacher {problem}.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype)).to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    spec = f"hf-causal-lm:{dtype}"
    return TeacherService(Teacher(model, name=Path(path).name, spec=spec), name=name or Path(path).name, max_tokens=max_tokens,
                          max_logprobs=max_logprobs, signals=signals, tokenizer=tokenizer)


def serve(service: TeacherService, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    """Run the app with uvicorn until interrupted (logs one warning line when not bound to loopback)."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve-teacher: listening on %s, reachable from other machines%s", host,
                    "" if token else " without a bearer token (--token-file)")
    uvicorn.run(create_app(service, token), host=host, port=port, log_level="warning")


@contextlib.contextmanager
def running(service: TeacherService, *, port: int = 0, token: str | None = None) -> Iterator[str]:
    """Serve ``service`` on 127.0.0.1 from a background thread for the ``with`` block; yields its URL
    (``port`` 0: a free one). For notebooks, tests and benchmarks; the CLI runs `serve` instead."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service, token), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name=f"serve-teacher:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"serve-teacher: the server on 127.0.0.1:{port} did not start.")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
