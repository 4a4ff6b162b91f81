r"""Adaptive-k sparse teacher signals: at each position, the fewest top log-probabilities whose
reconstruction stays within a KL budget.

A fixed k over-stores confident positions and under-stores uncertain ones. Here every position
keeps the smallest :math:`k \in [k_{min}, k_{max}]` with

.. math::

    \mathrm{KL}(p \,\|\, \hat p_k) \le \varepsilon,

where :math:`\hat p_k` is exactly what the losses train on: the fp16 top-k log-probabilities plus
the fp16 tail bucket spread uniformly over the other :math:`V - k` tokens, renormalised by
:func:`~anydistill.lm.topk.densify_rows`.

**KL for every k at once.** Sort :math:`p` decreasingly. With exact top entries the first
:math:`k` terms of the KL vanish, and the tail tokens all get :math:`r_k / (V - k)`,
:math:`r_k = \sum_{i > k} p_i`, so

.. math::

    \mathrm{KL}_k = \sum_{i > k} p_i \log p_i - r_k \log\frac{r_k}{V - k},

two suffix sums over the sorted row (:func:`kl_per_k`). fp16 storage moves the reconstruction a
little, so the chosen k is then checked on the actual fp16 reconstruction and raised where rounding
breaks the budget. ``k_max = V`` meets any budget above that rounding (of order 1e-7 nats per token
for the spread rows of the tests); a ``k_max < V``, or a budget below the rounding, may not: such
positions keep ``k_max`` and are reported (``kl > eps``), never hidden.

**Storage** is ragged (:class:`RaggedTeacher`): rows back to back with an int64 ``offsets`` array.
The losses take a rectangular :class:`~anydistill.lm.topk.SparseTeacher`, so :meth:`RaggedTeacher.padded`
pads a batch of rows to its widest one in a way that changes no reconstruction (see there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.core.checks import is_finite_number, is_int, raise_problems
from anydistill.lm.topk import SparseTeacher, densify_rows

# int16 holds ids 0..32767, i.e. any vocabulary of at most 32,768 tokens.
INT16_VOCAB = 32768


def adaptive_problems(kl_budget: object, k_min: object, k_max: object, vocab: object) -> list[str]:
    """One line per problem of an adaptive cache's settings (``[]`` if they are valid)."""
    problems = []
    if not (is_finite_number(kl_budget) and kl_budget > 0):
        problems.append(f"The 'kl_budget' of the adaptive top-k cache must be a number > 0 (nats per token, e.g. 1e-3). Got {kl_budget!r}.")
    if not (is_int(k_min) and k_min >= 1):
        problems.append(f"The 'k_min' of the adaptive top-k cache must be an int >= 1. Got {k_min!r}.")
    if not (is_int(k_max) and k_max >= 1):
        problems.append(f"The 'k_max' of the adaptive top-k cache must be an int >= 1. Got {k_max!r}.")
    elif is_int(k_min) and k_min > k_max:
        problems.append(f"The 'k_min' of the adaptive top-k cache must be <= k_max={k_max}. Got {k_min}.")
    elif is_int(vocab) and k_max > vocab:
        problems.append(f"The 'k_max' of the adaptive top-k cache must be <= the vocabulary V={vocab}. Got {k_max}.")
    return problems


def index_dtype_for(vocab: int) -> torch.dtype:
    """int16 ids when ``vocab <= 32768`` (ids up to 32767), int32 above."""
    return torch.int16 if vocab <= INT16_VOCAB else torch.int32


@torch.no_grad()
def kl_per_k(sorted_log_p: Tensor) -> Tensor:
    """Closed-form ``KL(p || top-k + uniform tail)`` for every ``k = 1..V`` (exact top entries).

    Args:
        sorted_log_p: ``[n, V]`` log-probabilities sorted decreasingly along the last dim (use
            float64: the two sums below nearly cancel).

    Returns:
        ``[n, V]``, column ``k - 1`` holding KL for that k (0 at ``k = V``).
    """
    n, vocab = sorted_log_p.shape
    p = sorted_log_p.exp()
    p_log_p = torch.where(p > 0, p * sorted_log_p, torch.zeros_like(p))  # 0 log 0 = 0
    # Suffix sums from the smallest entries up (small tails keep their relative accuracy);
    # keeping k entries leaves sorted entries k..V-1, i.e. suffix index k.
    zero = p.new_zeros(n, 1)
    tail_mass = torch.cat([p.flip(-1).cumsum(-1).flip(-1)[:, 1:], zero], -1)
    tail_p_log_p = torch.cat([p_log_p.flip(-1).cumsum(-1).flip(-1)[:, 1:], zero], -1)
    others = vocab - torch.arange(1, vocab + 1, device=p.device, dtype=p.dtype)  # V - k
    uniform = tail_mass * (tail_mass.log() - others.log())
    return torch.where(tail_mass > 0, tail_p_log_p - uniform, torch.zeros_like(p))


def padded_sparse(logprobs: Tensor, indices: Tensor, tail: Tensor, counts: Tensor, vocab: int) -> SparseTeacher:
    r"""A rectangular `SparseTeacher` whose reconstruction is, row by row, that of ``counts`` entries.

    Args:
        logprobs: ``[n, W]`` stored log-probabilities (fp16); slots ``j >= counts`` must repeat
            the row's last real entry (``j = counts - 1``).
        indices: ``[n, W]`` ids, padded the same way (any integer dtype).
        tail: ``[n]`` the stored log tail mass of each row (for its own ``counts``).
        counts: ``[n]`` int64, the real entries of each row, in ``[1, W]``.
        vocab: ``V >= W``.

    Why this is exact: a padded slot rewrites its row's last (id, value) pair, so ``scatter_``
    writes an identical value twice and adds no mass whatever the write order. ``densify_rows``
    spreads the tail over the ``V - W`` tokens of a width-W row, but the row's tail belongs to its
    ``V - count`` untouched tokens, so the tail passed on is shifted by ``log((V - W) / (V - count))``
    (fp32): each of those tokens gets ``tail - log(V - count)``, as the unpadded row. At ``W = V``
    ``densify_rows`` ignores the tail, so the rows are returned dense instead: all V ids, each
    with its reconstructed log-probability (before renormalisation).
    """
    n, width = logprobs.shape
    ids = indices.to(torch.int32)  # SparseTeacher takes int32 or int64; int16 storage widens here
    counts = counts.to(logprobs.device)
    fill = torch.where(counts < vocab, tail.float() - (vocab - counts).clamp(min=1).double().log().float(),
                       torch.full_like(tail, float("-inf"), dtype=torch.float32))
    if width < vocab:
        return SparseTeacher(logprobs=logprobs, indices=ids, tail_logprob=fill + math.log(vocab - width))
    dense = fill[:, None].expand(n, vocab).clone()
    dense.scatter_(-1, ids.long(), logprobs.float())
    every_id = torch.arange(vocab, device=ids.device, dtype=ids.dtype).expand(n, vocab)
    return SparseTeacher(logprobs=dense, indices=every_id, tail_logprob=torch.full_like(fill, float("-inf")))


@dataclass
class RaggedTeacher:
    """Adaptive-k sparse rows stored back to back (row ``i`` is ``offsets[i]:offsets[i + 1]``).

    Attributes:
        logprobs: ``[E]`` fp16 log-probabilities at ``T = 1``, each row sorted decreasingly.
        indices: ``[E]`` vocabulary ids (int16 for ``V <= 32768``, else int32).
        tail_logprob: ``[N]`` fp16 log of the mass outside each row's entries.
        offsets: ``[N + 1]`` int64, ``offsets[0] = 0`` and ``offsets[N] = E``.
    """

    logprobs: Tensor
    indices: Tensor
    tail_logprob: Tensor
    offsets: Tensor

    @property
    def num_tokens(self) -> int:
        return self.tail_logprob.shape[0]

    @property
    def counts(self) -> Tensor:
        """``[N]`` int64, the k of every row."""
        return self.offsets[1:] - self.offsets[:-1]

    def padded(self, rows: Tensor, vocab: int) -> SparseTeacher:
        """The `SparseTeacher` of ``rows`` [n] (int64 row numbers), padded to their largest k
        without changing any row's reconstruction (:func:`padded_sparse`)."""
        rows = rows.to(self.offsets.device)
        starts = self.offsets[rows]
        counts = self.offsets[rows + 1] - starts
        width = int(counts.max()) if rows.numel() else 1
        # Slot j reads entry min(j, count - 1): padding repeats the row's last real entry.
        slot = torch.minimum(torch.arange(width, device=starts.device)[None], (counts - 1).clamp(min=0)[:, None])
        take = starts[:, None] + slot
        return padded_sparse(self.logprobs[take], self.indices[take], self.tail_logprob[rows], counts, vocab)


def ragged_bytes_per_token(ragged: RaggedTeacher) -> float:
    """Mean storage per token: ``k * (value + id bytes)`` + the tail + one int64 offset."""
    per_entry = ragged.logprobs.element_size() + ragged.indices.element_size()
    mean_k = ragged.logprobs.shape[0] / max(ragged.num_tokens, 1)
    return mean_k * per_entry + ragged.tail_logprob.element_size() + ragged.offsets.element_size()


@torch.no_grad()
def adaptive_sparsify(
    teacher_logits: Tensor, kl_budget: float, k_min: int, k_max: int, *, chunk_tokens: int = 512,
) -> tuple[RaggedTeacher, Tensor]:
    """Keep, at each row, the fewest top log-probabilities whose fp16 reconstruction meets the budget.

    Args:
        teacher_logits: ``[N, V]`` (or ``[..., V]``, flattened row-major), at ``T = 1``.
        kl_budget: ``eps > 0``, nats per token.
        k_min, k_max: ``1 <= k_min <= k_max <= V``.
        chunk_tokens: rows processed at once (about ten float64 ``[chunk_tokens, V]`` temporaries).

    Returns:
        ``(ragged, kl)``: the rows on the CPU, and ``kl`` [N] float64, each row's
        ``KL(p || reconstruction)`` as the losses will reconstruct it; ``kl > eps`` only where
        ``k = k_max`` could not meet the budget.
    """
    vocab = teacher_logits.shape[-1] if teacher_logits.ndim else 0
    problems = adaptive_problems(kl_budget, k_min, k_max, vocab)
    if not (is_int(chunk_tokens) and chunk_tokens >= 1):
        problems.append(f"The 'chunk_tokens' argument of adaptive_sparsify must be an int >= 1. Got {chunk_tokens!r}.")
    raise_problems(problems)
    index_dtype = index_dtype_for(vocab)
    rows = teacher_logits.detach().reshape(-1, vocab)
    parts: dict[str, list[Tensor]] = {"logprobs": [], "indices": [], "tail": [], "counts": [], "kl": []}
    for start in range(0, rows.shape[0], chunk_tokens):
        log_p = F.log_softmax(rows[start : start + chunk_tokens].double(), dim=-1)
        sorted_log_p, order = log_p.sort(-1, descending=True)
        kl_closed = kl_per_k(sorted_log_p)[:, k_min - 1 : k_max]
        meets = kl_closed <= kl_budget
        # The first k that meets the budget (argmax returns the first True); k_max if none does.
        k = torch.where(meets.any(-1), meets.long().argmax(-1) + k_min, torch.full_like(meets[:, 0], k_max, dtype=torch.long))
        chunk = _SortedRows(log_p, sorted_log_p, order, vocab)
        everything = torch.arange(log_p.shape[0], device=log_p.device)
        kl = chunk.kl(everything, k)
        # fp16 rounding can push a row just over the budget: raise its k until it fits. One more
        # entry nearly always suffices; the step doubles after 8 rounds so a budget below the
        # fp16 floor cannot loop V times.
        step, rounds = 1, 0
        while (todo := ((kl > kl_budget) & (k < k_max)).nonzero().squeeze(1)).numel():
            k[todo] = (k[todo] + step).clamp(max=k_max)
            kl[todo] = chunk.kl(todo, k[todo])
            rounds += 1
            step = step * 2 if rounds >= 8 else step
        values, ids, tail = chunk.stored(everything, k)
        real = torch.arange(values.shape[1], device=k.device)[None] < k[:, None]  # row-major: rows stay contiguous
        parts["logprobs"].append(values[real].cpu())
        parts["indices"].append(ids[real].to(index_dtype).cpu())
        parts["tail"].append(tail.cpu())
        parts["counts"].append(k.cpu())
        parts["kl"].append(kl.cpu())
    if not parts["tail"]:  # N == 0
        parts = {"logprobs": [torch.zeros(0, dtype=torch.float16)], "indices": [torch.zeros(0, dtype=index_dtype)],
                 "tail": [torch.zeros(0, dtype=torch.float16)], "counts": [torch.zeros(0, dtype=torch.long)],
                 "kl": [torch.zeros(0, dtype=torch.float64)]}
    counts = torch.cat(parts["counts"])
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    ragged = RaggedTeacher(logprobs=torch.cat(parts["logprobs"]), indices=torch.cat(parts["indices"]),
                           tail_logprob=torch.cat(parts["tail"]), offsets=offsets)
    return ragged, torch.cat(parts["kl"])


class _SortedRows:
    """A chunk of rows of ``adaptive_sparsify``: ``log_p`` [n, V] (float64), the same sorted
    decreasingly with its ``order``, and the log tail mass ``log r_k`` for every ``k = 0..V``."""

    def __init__(self, log_p: Tensor, sorted_log_p: Tensor, order: Tensor, vocab: int):
        self.log_p, self.sorted_log_p, self.order, self.vocab = log_p, sorted_log_p, order, vocab
        # Suffix sums of the sorted probabilities, smallest first; column k is the mass after the top k.
        suffix = sorted_log_p.exp().flip(-1).cumsum(-1).flip(-1)
        self.log_tail = torch.cat([suffix, suffix.new_zeros(suffix.shape[0], 1)], -1).log()

    def stored(self, which: Tensor, ks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """fp16 values [m, max k], ids and fp16 tail [m] of rows ``which`` at ``ks``, padded by repetition."""
        slot = torch.minimum(torch.arange(int(ks.max()), device=ks.device)[None], ks[:, None] - 1)
        values = self.sorted_log_p[which].gather(1, slot).half()
        tail = self.log_tail[which].gather(1, ks[:, None]).squeeze(1).half()
        return values, self.order[which].gather(1, slot), tail

    def kl(self, which: Tensor, ks: Tensor) -> Tensor:
        """``KL(p || fp16 reconstruction)`` [m] (float64) of rows ``which`` at ``ks``, through the losses' densify."""
        sparse = padded_sparse(*self.stored(which, ks), ks, self.vocab)
        log_q = densify_rows(sparse.logprobs, sparse.indices, sparse.tail_logprob, self.vocab).double()
        log_p = self.log_p[which]
        terms = log_p.exp() * (log_p - log_q)
        return torch.where(log_p > float("-inf"), terms, torch.zeros_like(terms)).sum(-1)
