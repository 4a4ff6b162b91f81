r"""Distillation between models with different tokenizers: aligning two tokenisations of one text,
merging the distributions of tokens one side splits, and the losses over the merged
distributions (ULD's sorted distance and GOLD's hybrid).

Notation, per completion: the student has ``n_s`` tokens with byte spans ``s_k = [a_k, b_k)`` in
the completion text and next-token distributions :math:`q_k` (the row predicting token k), the
teacher ``n_t`` tokens with spans ``t_j`` and distributions :math:`p_j`. Rows of aligned tensors
are the G *groups*: runs of consecutive tokens of each side that cover the same text.

Everything here is a function of tensors and lists: no model, no tokenizer (except
`vocab_overlap`, built once from the two tokenizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# Probabilities are clamped here before a log or a product (TRL's GOLD uses the same floor).
EPS = 1e-8


def alignment_groups(student_spans: Sequence[Sequence[int]], teacher_spans: Sequence[Sequence[int]]
                     ) -> tuple[list[list[int]], list[list[int]]]:
    """Group the two token sequences at the byte boundaries both tokenizers share.

    Walk both span lists, advancing the side whose current token ends first; when both current
    tokens end at the same byte, close a group holding every token passed on each side. Tokens
    left over when one side runs out form one last group (possibly empty on one side). Same
    result as TRL's ``ULDLoss._align_by_byte_offsets``.

    Args:
        student_spans, teacher_spans: ``(start, end)`` per token, in text order (only ends are read).

    Returns:
        ``(student_groups, teacher_groups)``: G lists of token indices each, group g of one side
        covering the same text as group g of the other.
    """
    s_groups: list[list[int]] = []
    t_groups: list[list[int]] = []
    s = t = s_start = t_start = 0
    while s < len(student_spans) and t < len(teacher_spans):
        s_end, t_end = student_spans[s][1], teacher_spans[t][1]
        if s_end <= t_end:
            s += 1
        if t_end <= s_end:
            t += 1
        if s_end == t_end:  # a boundary of both tokenisations: the group is complete
            s_groups.append(list(range(s_start, s)))
            t_groups.append(list(range(t_start, t)))
            s_start, t_start = s, t
    if s < len(student_spans) or t < len(teacher_spans):
        s_groups.append(list(range(s_start, len(student_spans))))
        t_groups.append(list(range(t_start, len(teacher_spans))))
    return s_groups, t_groups


def shared_prefix(student_spans: Sequence[Sequence[int]], teacher_spans: Sequence[Sequence[int]]) -> tuple[int, int]:
    """``(k_s, k_t)``: how many leading tokens of each side end at or before the last byte boundary
    both share, so that the two prefixes cover the same text (a completion one side cut short is
    compared only where both have it)."""
    shared = {span[1] for span in student_spans} & {span[1] for span in teacher_spans}
    cut = max(shared, default=0)
    return sum(1 for span in student_spans if span[1] <= cut), sum(1 for span in teacher_spans if span[1] <= cut)


def merge_groups(probs: Tensor, groups: Sequence[Sequence[int]], token_ids: Tensor | Sequence[int]) -> Tensor:
    r"""One distribution per group, by TRL's "observed" rule: the full distribution of the group's
    first token times the probabilities of the group's actual later tokens,

    .. math::

        \tilde p_g = p_{i_0} \prod_{m=1}^{k} p_{i_m}(y_{i_m}), \qquad g = (i_0, \dots, i_k),

    each factor floored at 1e-8. The result is unnormalised: :math:`\tilde p_g(v)` approximates the
    probability of the group's text starting with token v. A singleton group is its row; an empty
    group is zeros. Same values as TRL's ``_merge_probabilities_with_alignment_groups`` (observed).

    Args:
        probs: ``[n, V]``, row i the distribution of token i (the row that predicts it).
        groups: G lists of row indices.
        token_ids: ``[n]``, the actual token at each row.

    Returns:
        ``[G, V]`` in the dtype of ``probs``; differentiable in ``probs``.
    """
    device = probs.device
    ids = torch.as_tensor(token_ids, device=device, dtype=torch.long)
    first = torch.tensor([g[0] if len(g) else 0 for g in groups], dtype=torch.long, device=device)
    later = [(g_index, i) for g_index, g in enumerate(groups) for i in g[1:]]
    # Singleton groups over every row in order (one tokenisation on both sides) need no [G, V] copy.
    in_order = len(groups) == probs.shape[0] and all(len(g) == 1 and g[0] == i for i, g in enumerate(groups))
    merged = probs if in_order else probs[first]
    if not all(groups):  # an empty group is zeros (one [G, V] copy less when none is)
        nonempty = torch.tensor([len(g) > 0 for g in groups], dtype=torch.bool, device=device)
        merged = merged * nonempty[:, None].to(probs.dtype)
    if later:
        owner = torch.tensor([g for g, _ in later], dtype=torch.long, device=device)
        rows = torch.tensor([i for _, i in later], dtype=torch.long, device=device)
        factors = probs[rows, ids[rows]].clamp_min(EPS)
        product = torch.ones(len(groups), dtype=probs.dtype, device=device).scatter_reduce(0, owner, factors, reduce="prod")
        merged = merged * product[:, None]
    return merged


def sorted_l1(student: Tensor, teacher: Tensor) -> Tensor:
    r"""ULD's distance per row: the L1 distance of the two distributions sorted in decreasing order,
    the narrower one padded with zeros,

    .. math::

        d = \sum_{i=1}^{\max(V_s, V_t)} \big|\mathrm{sort}_\downarrow(q)_i - \mathrm{sort}_\downarrow(p)_i\big|

    (the closed-form Wasserstein-1 distance between the two sets of probabilities, which needs no
    token correspondence).

    Computed without sorting (or padding) the wider side: past the narrower width k the padded side
    is 0 and the entries are non-negative, so that tail adds the wider side's mass outside its top k,
    :math:`d = \sum_{i\le k} |w_{(i)} - n_{(i)}| + \sum_{i > k} w_{(i)}`. Same value and
    same gradient through a softmax; a top-k of 258 among 4,096 keeps [G, 258] indices for the
    backward pass where a sort keeps [G, 4096].

    Args:
        student: ``[G, V_s]`` non-negative probabilities (gradients flow).
        teacher: ``[G, V_t]`` non-negative probabilities.

    Returns:
        ``[G]``.
    """
    wide, narrow = (student, teacher) if student.shape[-1] >= teacher.shape[-1] else (teacher, student)
    top, index = wide.topk(narrow.shape[-1], dim=-1)  # sorted, decreasing
    tail = wide.scatter(-1, index, 0.0).sum(-1)  # the mass outside the top k, summed directly (no cancellation)
    return (top - narrow.sort(dim=-1, descending=True).values).abs().sum(-1) + tail


def jsd_of_probs(student: Tensor, teacher: Tensor, beta: float) -> Tensor:
    r"""Generalized JSD of GKD per row, on probability vectors that need not sum to one (a
    vocabulary subset, merged groups), as TRL's ``generalized_jsd_loss(..., logits_are_probs=True)``:

    .. math::

        \beta\,\mathrm{KL}(p \| m) + (1-\beta)\,\mathrm{KL}(q \| m), \quad m = \beta p + (1-\beta) q,

    with :math:`\log` of probabilities floored at 1e-8, ``beta = 0`` giving KL(p || q) and
    ``beta = 1`` KL(q || p).

    Args:
        student: ``[G, M]`` (q; gradients flow).
        teacher: ``[G, M]`` (p).
        beta: the teacher's weight in the mixture.

    Returns:
        ``[G]``.
    """
    log_q, log_p = student.clamp_min(EPS).log(), teacher.clamp_min(EPS).log()
    kl = lambda log_a, log_b: (log_a.exp() * (log_a - log_b)).sum(-1)
    if beta == 0:
        return kl(log_p, log_q)
    if beta == 1:
        return kl(log_q, log_p)
    b = torch.tensor(beta, dtype=log_q.dtype, device=log_q.device)
    log_m = torch.logsumexp(torch.stack([log_q + torch.log1p(-b), log_p + torch.log(b)]), dim=0)
    return beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)


@dataclass(frozen=True)
class VocabOverlap:
    """Token ids that stand for the same thing in both vocabularies: ``student_ids[m]`` and
    ``teacher_ids[m]`` ([M] int64 each, one to one), among the first ``student_width`` /
    ``teacher_width`` ids (the models' logits)."""

    student_ids: Tensor
    teacher_ids: Tensor
    student_width: int
    teacher_width: int

    @property
    def size(self) -> int:
        return int(self.student_ids.numel())


def vocab_overlap(student_tokenizer, teacher_tokenizer, *, student_width: int, teacher_width: int,
                  match: Literal["bytes", "string"] = "bytes") -> VocabOverlap:
    """The shared vocabulary of two tokenizers.

    ``match="string"`` pairs ids whose token strings (``get_vocab()`` keys) are equal, as TRL's GOLD
    does. ``match="bytes"`` pairs ids that stand for the same bytes (`token_bytes`), so a byte-level
    ``Ġthe`` meets a character or SentencePiece ``" the"`` / ``▁the``; added and special tokens
    pair by content and only with each other, and the two ``<eos>`` always pair. Each id pairs at
    most once (the lowest id wins a tie).
    """
    from anydistill.data.token_bytes import token_bytes

    def keys(tokenizer) -> dict:
        if match == "string":
            return {token: index for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: -kv[1])}
        added = {index: token.content for index, token in tokenizer.added_tokens_decoder.items()}
        table = token_bytes(tokenizer)
        found: dict = {}
        for index in reversed(range(len(table))):  # the lowest id is written last and wins
            if index == tokenizer.eos_token_id:
                found[("eos",)] = index
            elif index in added:
                found[("added", added[index])] = index
            elif table[index]:  # an id that stands for no text pairs with nothing
                found[("bytes", table[index])] = index
        return found

    student_keys, teacher_keys = keys(student_tokenizer), keys(teacher_tokenizer)
    pairs = sorted((teacher_keys[k], s) for k, s in student_keys.items()
                   if k in teacher_keys and s < student_width and teacher_keys[k] < teacher_width)
    teacher_ids = torch.tensor([t for t, _ in pairs], dtype=torch.long)
    student_ids = torch.tensor([s for _, s in pairs], dtype=torch.long)
    return VocabOverlap(student_ids, teacher_ids, student_width, teacher_width)


def hybrid_distance(student: Tensor, teacher: Tensor, overlap: VocabOverlap, *, beta: float,
                    matched_weight: float | None = None, unmatched_weight: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""GOLD's hybrid distance per row: JSD on the shared vocabulary, sorted ULD on the rest,

    .. math::

        d = w_m\,\mathrm{JSD}_\beta\big(q[S_s],\, p[S_t]\big) + w_u\,\big\|\mathrm{sort}_\downarrow q[\bar S_s] - \mathrm{sort}_\downarrow p[\bar S_t]\big\|_1

    where :math:`S_s, S_t` are the paired ids of `VocabOverlap` (in pair order) and
    :math:`\bar S` the others. Without given weights they adapt to the overlap as in TRL:
    :math:`w_m = M / V_t`, :math:`w_u = 1 - w_m` (``V_t`` the teacher's logits width). The unshared
    term is 0 when either side has no unshared column.

    Args:
        student: ``[G, V_s]`` probabilities (possibly merged groups); gradients flow.
        teacher: ``[G, V_t]`` probabilities.
        overlap: the shared ids (`vocab_overlap`), for these widths.
        beta: the JSD's teacher weight.
        matched_weight, unmatched_weight: both or neither.

    Returns:
        ``(d, jsd, l1)``: ``[G]`` each, the weighted total and its two unweighted parts.
    """
    s_ids, t_ids = overlap.student_ids.to(student.device), overlap.teacher_ids.to(teacher.device)
    zero = student.new_zeros(student.shape[0])
    jsd = jsd_of_probs(student[:, s_ids], teacher[:, t_ids], beta) if overlap.size else zero
    s_rest = torch.ones(student.shape[-1], dtype=torch.bool, device=student.device)
    t_rest = torch.ones(teacher.shape[-1], dtype=torch.bool, device=teacher.device)
    s_rest[s_ids], t_rest[t_ids] = False, False
    l1 = sorted_l1(student[:, s_rest], teacher[:, t_rest]) if s_rest.any() and t_rest.any() else zero
    if matched_weight is None:
        matched_weight = overlap.size / max(1, teacher.shape[-1])
        unmatched_weight = 1.0 - matched_weight
    return matched_weight * jsd + unmatched_weight * l1, jsd, l1
