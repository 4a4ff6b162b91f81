r"""Sparse (top-k + tail bucket) teacher signals for language-model distillation.

A full teacher distribution costs ``V`` floats per token (``V`` = 32k-256k), too much to cache for
every completion token. A :class:`SparseTeacher` keeps, per token, the ``k`` largest
log-probabilities and their vocabulary ids, plus optionally a *tail bucket*: the log of the
probability mass left outside the top-k,

.. math::

    \log r = \log\Big(1 - \sum_{i \in \text{top-}k} p_i\Big),

computed exactly as a logsumexp over the non-top-k log-probabilities (no ``1 - sum`` cancellation).

Reconstruction (:func:`densify`) turns a sparse row back into a full distribution over ``V``:

* **with a tail**, the top-k tokens keep their stored log-probabilities and the tail mass ``r`` is
  spread uniformly over the ``V - k`` other tokens (``log r - log(V - k)`` each). Of all
  distributions that are exact on the top-k and uniform elsewhere, this one is the closest to the
  teacher in ``KL(teacher || ·)``, so :func:`reconstruction_kl` can only fall as ``k`` grows;
* **without a tail**, the top-k probabilities are renormalised to sum to 1 and every other token
  gets probability 0 (log-probability ``-inf``). The teacher's true distribution has mass there,
  so ``KL(teacher || reconstruction)`` is ``+inf`` for ``k < V``, and a student trained on it is
  pushed to zero mass outside the top-k (the bias the tail bucket removes).

Either way the row is finally renormalised over ``V`` (a no-op in exact arithmetic; it absorbs the
rounding of fp16 storage).

Temperature: the stored values are log-probabilities at ``T = 1``. A temperature is applied to the
*reconstructed* log-probabilities exactly like to logits: ``log_softmax(log p_recon / T)`` over the
whole vocabulary, i.e. ``p_T ∝ p_recon ** (1 / T)``. For ``k = V`` this equals
``log_softmax(z / T)`` of the original logits ``z``; for ``k < V`` it is the tempered
reconstruction, not a reconstruction of the tempered teacher (the tail tokens stay uniform among
themselves at every ``T``; zero-mass tokens stay at zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.core.checks import is_finite_number, raise_problems

_VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass
class SparseTeacher:
    """Top-k log-probabilities of a teacher, one row per token, plus an optional tail bucket.

    Attributes:
        logprobs: ``[N, k]`` log-probabilities at temperature 1 (fp16, bf16 or fp32), of the
            tokens in ``indices``. :func:`sparsify` stores them sorted in decreasing order, but
            nothing relies on the order.
        indices: ``[N, k]`` vocabulary ids (int32 or int64), distinct within a row.
        tail_logprob: ``[N]`` log of the probability mass outside the top-k,
            ``log(1 - sum(exp(logprobs)))`` (``-inf`` when ``k = V``), or ``None`` for no tail
            bucket.

    Shapes and dtypes are checked when the object is built (no device sync).
    """

    logprobs: Tensor
    indices: Tensor
    tail_logprob: Tensor | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.logprobs.ndim != 2:
            problems.append(
                "The 'logprobs' field of SparseTeacher must have shape [N, k]. "
                f"Got {tuple(self.logprobs.shape)}."
            )
        if self.logprobs.dtype not in _VALUE_DTYPES:
            problems.append(
                "The 'logprobs' field of SparseTeacher must be float16, bfloat16 or float32. "
                f"Got {self.logprobs.dtype}."
            )
        if self.indices.shape != self.logprobs.shape:
            problems.append(
                "The 'indices' field of SparseTeacher must have the shape of 'logprobs' [N, k]. "
                f"Got {tuple(self.indices.shape)} and {tuple(self.logprobs.shape)}."
            )
        if self.indices.dtype not in _INDEX_DTYPES:
            problems.append(
                f"The 'indices' field of SparseTeacher must be int32 or int64. Got {self.indices.dtype}."
            )
        if self.tail_logprob is not None:
            if self.tail_logprob.shape != self.logprobs.shape[:1]:
                problems.append(
                    "The 'tail_logprob' field of SparseTeacher must have shape [N] (one value per "
                    f"row of 'logprobs'). Got {tuple(self.tail_logprob.shape)} and "
                    f"logprobs {tuple(self.logprobs.shape)}."
                )
            if self.tail_logprob.dtype not in _VALUE_DTYPES:
                problems.append(
                    "The 'tail_logprob' field of SparseTeacher must be float16, bfloat16 or "
                    f"float32. Got {self.tail_logprob.dtype}."
                )
        raise_problems(problems)

    @property
    def num_tokens(self) -> int:
        """``N``, the number of rows (tokens)."""
        return self.logprobs.shape[0]

    @property
    def k(self) -> int:
        """The number of stored log-probabilities per token."""
        return self.logprobs.shape[1]

    @property
    def has_tail(self) -> bool:
        return self.tail_logprob is not None


@torch.no_grad()
def sparsify(
    teacher_logits: Tensor,
    k: int,
    tail: bool = True,
    *,
    dtype: torch.dtype = torch.float32,
    index_dtype: torch.dtype = torch.int64,
    chunk_tokens: int = 4096,
) -> SparseTeacher:
    """Keep the ``k`` most probable tokens of every row of ``teacher_logits`` (at ``T = 1``).

    Args:
        teacher_logits: ``[N, V]`` (or ``[..., V]``: the leading dims are flattened row-major,
            so ``[B, L, V]`` gives ``N = B * L`` rows).
        k: ``1 <= k <= V``.
        tail: also store the tail bucket ``log(1 - sum of the top-k probabilities)``.
        dtype: storage dtype of the log-probabilities and the tail (float16, bfloat16, float32).
        index_dtype: storage dtype of the ids (int32 suffices for any real vocabulary).
        chunk_tokens: rows processed at once; the fp32 log-softmax is ``[chunk_tokens, V]``.

    Returns:
        A :class:`SparseTeacher` with ``N`` rows, on the device of ``teacher_logits``.
    """
    problems = []
    if teacher_logits.ndim == 0:
        problems.append(
            "The 'teacher_logits' argument of sparsify must have shape [N, V]. Got a 0-dim tensor."
        )
    vocab = teacher_logits.shape[-1] if teacher_logits.ndim else 0
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= vocab):
        problems.append(f"The 'k' argument of sparsify must be an int in [1, V={vocab}]. Got {k!r}.")
    if dtype not in _VALUE_DTYPES:
        problems.append(f"The 'dtype' argument of sparsify must be one of {_VALUE_DTYPES}. Got {dtype}.")
    if index_dtype not in _INDEX_DTYPES:
        problems.append(
            f"The 'index_dtype' argument of sparsify must be one of {_INDEX_DTYPES}. Got {index_dtype}."
        )
    if not (isinstance(chunk_tokens, int) and not isinstance(chunk_tokens, bool) and chunk_tokens >= 1):
        problems.append(f"The 'chunk_tokens' argument of sparsify must be an int >= 1. Got {chunk_tokens!r}.")
    raise_problems(problems)

    rows = teacher_logits.detach().reshape(-1, vocab)
    values, indices, tails = [], [], []
    for start in range(0, rows.shape[0], chunk_tokens):
        log_p = F.log_softmax(rows[start : start + chunk_tokens].float(), dim=-1)
        top_values, top_indices = log_p.topk(k, dim=-1)
        values.append(top_values.to(dtype))
        indices.append(top_indices.to(index_dtype))
        if tail:
            # log of the mass outside the top-k, exactly: logsumexp over the other tokens
            # (log1p(-sum p_k) would round to -inf once the tail falls below fp32's epsilon).
            rest = log_p.scatter(-1, top_indices, float("-inf"))
            tails.append(torch.logsumexp(rest, dim=-1).to(dtype))
    if not values:  # N == 0
        values = [rows.new_zeros((0, k), dtype=dtype)]
        indices = [rows.new_zeros((0, k), dtype=index_dtype)]
        tails = [rows.new_zeros((0,), dtype=dtype)]
    return SparseTeacher(
        logprobs=torch.cat(values),
        indices=torch.cat(indices),
        tail_logprob=torch.cat(tails) if tail else None,
    )


def densify(sparse: SparseTeacher, vocab_size: int, temperature: float = 1.0) -> Tensor:
    """Reconstruct full log-probabilities ``[N, V]`` (fp32) from a :class:`SparseTeacher`.

    With a tail bucket the remaining mass is spread uniformly over the ``V - k`` non-top-k tokens;
    without one the top-k is renormalised and the other tokens get ``-inf`` (probability 0). Then
    ``temperature`` is applied as ``log_softmax(log p / T)`` over ``V`` (see the module docstring).

    This materialises ``N x V`` floats: call it on a chunk of rows. The losses of
    :mod:`anydistill.lm.token_losses` do so themselves.

    Args:
        sparse: ``N`` rows of top-``k`` log-probabilities.
        vocab_size: ``V >= k``, larger than every stored id.
        temperature: ``T > 0``.
    """
    problems = []
    if not (isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and vocab_size >= sparse.k):
        problems.append(
            f"The 'vocab_size' argument of densify must be an int >= k={sparse.k}. Got {vocab_size!r}."
        )
    if not (is_finite_number(temperature) and temperature > 0):
        problems.append(
            f"The 'temperature' argument of densify must be a finite number > 0. Got {temperature!r}."
        )
    if not problems:
        problems += index_problems(sparse, vocab_size, "densify")
    raise_problems(problems)
    log_p = densify_rows(sparse.logprobs, sparse.indices, sparse.tail_logprob, vocab_size)
    if temperature != 1:
        log_p = F.log_softmax(log_p / temperature, dim=-1)
    return log_p


def bytes_per_token(sparse: SparseTeacher) -> int:
    """Storage cost of one token: ``k * (value bytes + index bytes)`` plus one value for the tail.

    For example ``k = 64`` in fp16 with int32 ids and a tail: ``64 * (2 + 4) + 2 = 386`` bytes,
    against ``2 * V`` bytes (64 KiB at ``V = 32k``) for the full fp16 logits.
    """
    per_entry = sparse.logprobs.element_size() + sparse.indices.element_size()
    tail = sparse.tail_logprob.element_size() if sparse.tail_logprob is not None else 0
    return sparse.k * per_entry + tail


@torch.no_grad()
def reconstruction_kl(full_logits: Tensor, sparse: SparseTeacher, *, chunk_tokens: int = 4096) -> Tensor:
    """Per-token ``KL(p_full || p_reconstructed)`` at ``T = 1``: what the sparse signal loses.

    It is also the forward KL between the teacher and the best student trainable on the sparse
    target (the reconstruction itself). It is 0 (up to rounding) for ``k = V``, falls as ``k``
    grows, and is ``+inf`` for ``k < V`` without a tail bucket, since the renormalised top-k
    gives probability 0 to tokens the teacher supports.

    Args:
        full_logits: ``[N, V]`` (or ``[..., V]``, flattened row-major), the logits ``sparse``
            was made from.
        sparse: ``N`` rows.
        chunk_tokens: rows processed at once.

    Returns:
        ``[N]``, fp32.
    """
    vocab = full_logits.shape[-1] if full_logits.ndim else 0
    rows = full_logits.detach().reshape(-1, vocab) if full_logits.ndim else full_logits
    if full_logits.ndim == 0 or rows.shape[0] != sparse.num_tokens:
        raise ValueError(
            "The 'full_logits' argument of reconstruction_kl must have one row per row of 'sparse' "
            f"([N={sparse.num_tokens}, V]). Got {tuple(full_logits.shape)}."
        )
    raise_problems(index_problems(sparse, vocab, "reconstruction_kl"))
    out = []
    for start in range(0, rows.shape[0], chunk_tokens):
        stop = start + chunk_tokens
        log_p = F.log_softmax(rows[start:stop].float(), dim=-1)
        tail = sparse.tail_logprob[start:stop] if sparse.tail_logprob is not None else None
        log_q = densify_rows(sparse.logprobs[start:stop], sparse.indices[start:stop], tail, vocab)
        # p * (log p - log q): +inf where p > 0 and q = 0; 0 where p = 0 (even if q = 0).
        terms = log_p.exp() * (log_p - log_q)
        out.append(torch.where(log_p.exp() > 0, terms, torch.zeros_like(terms)).sum(-1))
    return torch.cat(out) if out else rows.new_zeros((0,), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# helpers shared with token_losses


def densify_rows(logprobs: Tensor, indices: Tensor, tail_logprob: Tensor | None, vocab_size: int) -> Tensor:
    """Reconstruct ``[n, V]`` fp32 log-probabilities at ``T = 1`` from ``n`` sparse rows (no checks)."""
    n, k = logprobs.shape
    if tail_logprob is not None and k < vocab_size:
        # The tail mass r is shared equally by the V - k tokens outside the top-k.
        fill = tail_logprob.float() - math.log(vocab_size - k)
        dense = fill[:, None].expand(n, vocab_size).clone()
    else:
        dense = torch.full((n, vocab_size), float("-inf"), dtype=torch.float32, device=logprobs.device)
    dense.scatter_(-1, indices.long(), logprobs.float())
    # Renormalise over V: exact for fp32 storage, absorbs fp16 rounding, and renormalises the
    # top-k when there is no tail.
    return F.log_softmax(dense, dim=-1)


def index_problems(sparse: SparseTeacher, vocab_size: int, func: str) -> list[str]:
    """The problem (if any) of stored ids outside ``[0, vocab_size)``; one device sync."""
    if sparse.indices.numel() == 0:
        return []
    low, high = int(sparse.indices.min()), int(sparse.indices.max())
    if low >= 0 and high < vocab_size:
        return []
    return [
        f"The SparseTeacher given to {func} has token ids in [{low}, {high}], outside the "
        f"vocabulary [0, {vocab_size}). It was built for another vocabulary: check the teacher "
        "and student tokenizers, or slice the teacher logits to the shared vocabulary before sparsify."
    ]


