r"""Token-level distillation losses fused with the LM head: the ``[N, V]`` logits never exist.

:func:`anydistill.lm.token_losses.token_distill_loss` takes the student's logits ``[B, L, V]``:
with ``V`` = 128k and 4k tokens those are 2 GB in fp32, plus as much again for their gradient and
the teacher's logits. The functions here take instead the student's last hidden states ``h``
``[B, L, H]`` and its LM head ``(W [V, H], b [V])`` and form the logits ``chunk_tokens`` masked rows
at a time,

.. math::

    z_s = h W^\top + b, \qquad
    \text{loss\_sum} = \sum_{(b, l):\, \text{mask}_{b,l}} c_T \, D\big(p_t^{(b,l)}, p_s^{(b,l)}\big),
    \qquad p = \mathrm{softmax}(z / T)

with exactly the semantics of ``token_distill_loss`` fed ``h @ W.T + b`` (same divergences ``D``,
temperature rule, ``c_T = T^2`` if ``scale_by_t2``, masking, fp32 arithmetic, return value
``(loss_sum, num_tokens)`` and normalisation contract): each chunk's divergence is
``token_losses.per_token_divergence``, the very function the unfused loss applies per chunk.

**Teacher**: its hidden states ``[B, L, Ht]`` with its head ``(W_t [V, Ht], b_t)``, whose logits
are formed chunk by chunk too (no gradient); or dense logits ``[B, L, V]``; or a
:class:`~anydistill.lm.topk.SparseTeacher` (the top-k cache), densified chunk by chunk.

**Gradients are made in the forward pass** (the approach of Liger-Kernel's ``chunked_loss``): for
each chunk, :math:`g = \partial \ell / \partial z_s` ``[n, V]`` comes in closed form for ``fkl``,
``rkl``, ``jsd`` and the cross-entropy (:mod:`anydistill.lm.divergence_grad`, computed in place)
and from autograd on that chunk alone for the others; it is folded at once into

.. math::

    \frac{\partial \ell}{\partial h_i} = g_i W, \qquad
    \frac{\partial \ell}{\partial W} \mathrel{+}= g^\top h_{\text{chunk}}, \qquad
    \frac{\partial \ell}{\partial b} \mathrel{+}= \textstyle\sum_i g_i,

then the chunk's logits, activations and ``g`` are freed. Backward only scales the stored
gradients by the incoming one. Peak memory is therefore the chunk's ``[chunk_tokens, V]`` fp32
temporaries (about 5 for the closed forms, about 15 through autograd for the skew KLs and ``tvd``;
each is 128 MB at V = 128k and 256 tokens) plus ``[V, H]`` and ``[B*L, H]`` for the gradients,
instead of three ``[N, V]`` tensors (student logits, teacher logits, their gradient) on top of
the same chunk temporaries. The arithmetic is the unfused one: three ``N x V x H`` matmuls for the
student, one for a teacher given as hidden states; nothing is recomputed in backward (the unfused
loss recomputes each chunk's divergence under activation checkpointing).

**Cross-entropy.** ``lm-kd`` mixes in the data's cross-entropy, computed on the same logits.
:func:`fused_token_ce_loss` is ``token_ce_loss`` fused the same way; :func:`fused_kd_ce_loss`
computes both terms from one pass over the logits (half the head's matmuls of two separate calls).

Inputs to the student head must share one dtype (bf16 weights need bf16 hidden states); the
gradients of ``W`` and ``b`` are accumulated in fp32 for half-precision weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.lm.divergence_grad import CLOSED_FORM, ce_and_grad, divergence_and_grad
from anydistill.lm.token_losses import (
    chunk_ce_sum,
    divergence_problems,
    normalize,
    per_token_divergence,
    sparse_teacher_problems,
    teacher_chunk,
)
from anydistill.lm.topk import SparseTeacher

# objective(z_s [n, V], start, stop) -> (the chunk's scalar, its detached stats [k], its gradient
# d scalar / d z_s [n, V] when given in closed form, else None: autograd differentiates the scalar)
ChunkObjective = Callable[[Tensor, int, int], tuple[Tensor, Tensor, Tensor | None]]


def fused_token_distill_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    teacher: Tensor | SparseTeacher,
    teacher_weight: Tensor | None,
    teacher_bias: Tensor | None,
    mask: Tensor,
    *,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    scale_by_t2: bool = False,
    chunk_tokens: int = 256,
    normalizer: int | Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, int]:
    r"""``token_distill_loss(h @ W.T + b, teacher_logits, mask, ...)`` without forming the logits.

    .. math::

        \text{loss\_sum} = \sum_{(b, l):\, \text{mask}_{b,l}} c_T \,
            D\big(\mathrm{softmax}(z_t / T),\ \mathrm{softmax}((h_{b,l} W^\top + b) / T)\big)

    Args:
        student_hidden: ``[B, L, H]`` (leading dims = ``mask.shape``) or ``[B*L, H]`` (row-major),
            the inputs of the student's LM head; gradients flow into it.
        student_weight: ``[V, H]`` head weight (``get_output_embeddings().weight``, sliced to the
            shared vocabulary ``[:V]`` if needed); gradients flow into it.
        student_bias: ``[V]`` or None.
        teacher: with ``teacher_weight``: the teacher's hidden states ``[B, L, Ht]`` or
            ``[B*L, Ht]``; without: dense logits ``[B, L, V]`` (or ``[B*L, V]``) or a
            ``SparseTeacher`` (rows per position or per masked token, as in ``token_distill_loss``).
            Never differentiated.
        teacher_weight: ``[V, Ht]`` teacher head weight, or None (``teacher`` is logits / sparse).
        teacher_bias: ``[V]`` or None.
        mask: bool ``[B, L]``; True = completion token.
        divergence, temperature, beta, alpha, scale_by_t2, normalizer, weights: as in ``token_distill_loss``.
        chunk_tokens: masked tokens whose logits exist at once: memory ``~ 5 * chunk_tokens * V``
            fp32 floats for ``fkl``/``rkl``/``jsd`` (``~ 15 *`` for the others, through autograd);
            time barely depends on it.

    Returns:
        ``(loss_sum, num_tokens)`` exactly as ``token_distill_loss``: a 0-dim fp32 tensor (fp64 for
        fp64 inputs), connected to the student's hidden states and head even when the mask is
        empty (then 0 with zero gradients), and the number of masked tokens.
    """
    func = "fused_token_distill_loss"
    problems = divergence_problems(func, divergence, temperature, beta, alpha, chunk_tokens)
    problems += _head_problems(func, student_hidden, student_weight, student_bias, mask)
    problems += _teacher_problems(func, teacher, teacher_weight, teacher_bias, mask, student_weight, divergence, beta, alpha)
    raise_problems(problems)

    hidden, rows = _flat_rows(student_hidden, mask)
    teacher_of = _teacher_source(teacher, teacher_weight, teacher_bias, rows, student_weight.shape[0], mask.numel())

    row_weights = weights.detach().reshape(-1).to(hidden.device).index_select(0, rows) if weights is not None else None

    def objective(z_s: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor | None]:
        w = row_weights[start:stop] if row_weights is not None else None
        if divergence in CLOSED_FORM:
            per_token, grad = divergence_and_grad(z_s, teacher_of(start, stop, z_s), divergence=divergence,
                                                  temperature=temperature, beta=beta, need_grad=z_s.requires_grad)
            if w is not None:
                per_token = per_token * w.to(per_token)
                grad = grad.mul_(w.to(grad)[:, None]) if grad is not None else None
            return per_token.sum(), per_token.new_zeros(0), grad
        per_token = per_token_divergence(
            z_s, teacher_of(start, stop, z_s), divergence=divergence, temperature=temperature, beta=beta, alpha=alpha
        )
        if w is not None:
            per_token = per_token * w.to(per_token)
        return per_token.sum(), per_token.new_zeros(0), None

    loss_sum, _ = _head_sum(hidden, student_weight, student_bias, rows, chunk_tokens, objective)
    if scale_by_t2:
        loss_sum = loss_sum * temperature**2
    if normalizer is not None:
        loss_sum = normalize(loss_sum, normalizer)
    return loss_sum, rows.numel()


def fused_token_ce_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    labels: Tensor,
    mask: Tensor,
    *,
    chunk_tokens: int = 256,
) -> tuple[Tensor, int]:
    r"""``token_ce_loss(h @ W.T + b, labels, mask)`` without forming the logits.

    .. math::

        \text{ce\_sum} = -\sum_{(b, l):\, \text{mask}_{b,l}} \log \mathrm{softmax}(h_{b,l} W^\top + b)_{y_{b,l}}

    Args:
        student_hidden, student_weight, student_bias, mask, chunk_tokens: as in
            :func:`fused_token_distill_loss`.
        labels: integer ``[B, L]`` (shaped like ``mask``), the target of each position.

    Returns:
        ``(ce_sum, num_tokens)`` as ``token_ce_loss``.
    """
    func = "fused_token_ce_loss"
    problems = _head_problems(func, student_hidden, student_weight, student_bias, mask)
    problems += _labels_problems(func, labels, mask) + _chunk_problems(func, chunk_tokens)
    raise_problems(problems)
    hidden, rows = _flat_rows(student_hidden, mask)
    targets = labels.reshape(-1).to(hidden.device).index_select(0, rows)

    def objective(z_s: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor, None]:
        return chunk_ce_sum(z_s, targets[start:stop]), z_s.new_zeros(0), None

    ce_sum, _ = _head_sum(hidden, student_weight, student_bias, rows, chunk_tokens, objective)
    return ce_sum, rows.numel()


def fused_kd_ce_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    teacher: Tensor | SparseTeacher,
    teacher_weight: Tensor | None,
    teacher_bias: Tensor | None,
    labels: Tensor,
    mask: Tensor,
    *,
    kd_weight: float,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    scale_by_t2: bool = False,
    chunk_tokens: int = 256,
) -> tuple[Tensor, Tensor, Tensor, int]:
    r"""``lm-kd``'s mixture in one pass over the logits:
    :math:`a \cdot \text{kd\_sum} + (1 - a) \cdot \text{ce\_sum}` with ``a = kd_weight``.

    .. math::

        \text{loss\_sum} = a \sum_{\text{mask}} c_T\, D(p_t, p_s) + (1 - a) \sum_{\text{mask}} -\log p_s(y)

    where ``kd_sum`` is :func:`fused_token_distill_loss`'s value and ``ce_sum``
    :func:`fused_token_ce_loss`'s (the CE at ``T = 1``). Both come from the same chunk of logits,
    so the head's matmuls and the student's softmax run once, not twice.

    Args:
        labels: integer ``[B, L]``, the data's next tokens.
        kd_weight: :math:`a \in [0, 1]`, ``lm-kd``'s ``alpha``.
        the others: as in :func:`fused_token_distill_loss` (``alpha`` is the skew divergences' mix).

    Returns:
        ``(loss_sum, kd_sum, ce_sum, num_tokens)``: only ``loss_sum`` carries gradients; ``kd_sum``
        (with ``c_T``) and ``ce_sum`` are detached, for logging. Normalise ``loss_sum`` with
        ``token_losses.normalize`` by the step's global count.
    """
    func = "fused_kd_ce_loss"
    problems = divergence_problems(func, divergence, temperature, beta, alpha, chunk_tokens)
    if not (is_finite_number(kd_weight) and 0 <= kd_weight <= 1):
        problems.append(f"The 'kd_weight' argument of {func} must be in [0, 1]. Got {kd_weight!r}.")
    problems += _head_problems(func, student_hidden, student_weight, student_bias, mask)
    problems += _labels_problems(func, labels, mask)
    problems += _teacher_problems(func, teacher, teacher_weight, teacher_bias, mask, student_weight, divergence, beta, alpha)
    raise_problems(problems)

    hidden, rows = _flat_rows(student_hidden, mask)
    targets = labels.reshape(-1).to(hidden.device).index_select(0, rows)
    teacher_of = _teacher_source(teacher, teacher_weight, teacher_bias, rows, student_weight.shape[0], mask.numel())
    c_t = temperature**2 if scale_by_t2 else 1.0

    def objective(z_s: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor | None]:
        if divergence in CLOSED_FORM:
            per_token, grad = divergence_and_grad(z_s, teacher_of(start, stop, z_s), divergence=divergence,
                                                  temperature=temperature, beta=beta, need_grad=z_s.requires_grad)
            kd = c_t * per_token.sum()
            ce, ce_grad = ce_and_grad(z_s, targets[start:stop], need_grad=grad is not None)
            if grad is not None:
                grad = grad.mul_(kd_weight * c_t).add_(ce_grad, alpha=1 - kd_weight)
            return kd_weight * kd + (1 - kd_weight) * ce, torch.stack([kd, ce]), grad
        kd = c_t * per_token_divergence(
            z_s, teacher_of(start, stop, z_s), divergence=divergence, temperature=temperature, beta=beta, alpha=alpha
        ).sum()
        ce = chunk_ce_sum(z_s, targets[start:stop])
        return kd_weight * kd + (1 - kd_weight) * ce, torch.stack([kd.detach(), ce.detach()]), None

    loss_sum, (kd_sum, ce_sum) = _head_sum(hidden, student_weight, student_bias, rows, chunk_tokens, objective, stats=2)
    return loss_sum, kd_sum, ce_sum, rows.numel()


# ----------------------------------------------------------------------------------------------
# the chunked head


def _head_sum(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, rows: Tensor, chunk_tokens: int,
    objective: ChunkObjective, stats: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(sum of objective, sum of its stats [stats])`` over the chunks of ``hidden[rows] @ W.T + b``."""
    grad_on = torch.is_grad_enabled()
    needs = tuple(grad_on and t is not None and t.requires_grad for t in (hidden, weight, bias))
    return _ChunkedHead.apply(hidden, weight, bias, rows, chunk_tokens, objective, needs, stats)


class _ChunkedHead(torch.autograd.Function):
    """Forward computes the loss and its gradients chunk by chunk; backward scales those gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, chunk_tokens, objective, needs, stats):
        # hidden [M, H], weight [V, H], bias [V] | None, rows [N] (distinct indices into hidden).
        need_h, need_w, need_b = needs
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        # dL/dh is exact per row (each row is in one chunk), so it is kept in the hidden's dtype;
        # W and b sum over chunks, so half-precision heads accumulate in fp32.
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        stats_total = torch.zeros(stats, dtype=acc, device=hidden.device)
        any_grad = need_h or need_w or need_b
        for start in range(0, rows.numel(), chunk_tokens):
            chunk_rows = rows[start : start + chunk_tokens]
            h = hidden.index_select(0, chunk_rows)
            # The chunk's logits are a leaf: autograd below covers only the divergence, and the
            # head's three matmuls are done by hand (in place for W), never through a graph.
            z = F.linear(h, weight, bias)
            if any_grad:
                z.requires_grad_(True)
            with torch.set_grad_enabled(any_grad):
                value, chunk_stats, g = objective(z, start, start + chunk_rows.numel())
            total += value.detach()
            stats_total += chunk_stats
            if not any_grad:
                continue
            if g is None:
                (g,) = torch.autograd.grad(value, z)
            del value, z  # frees the chunk's activations before the matmuls allocate
            # Under autocast (bf16-mixed) z and g are bf16 while hidden and W are fp32: the
            # matmuls then run in bf16, as in the unfused backward, and are cast back.
            if need_h:
                grad_h.index_copy_(0, chunk_rows, (g @ weight).to(grad_h.dtype))
            if need_w:
                if g.dtype == h.dtype == acc:
                    grad_w.addmm_(g.t(), h)
                else:
                    grad_w += (g.t() @ h).to(acc)
            if need_b:
                grad_b += g.sum(0, dtype=acc)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(stats_total)
        return total, stats_total

    @staticmethod
    def backward(ctx, grad_total, grad_stats):
        grads = []
        for saved, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            # Out of place: a retained graph may call backward again with another grad_total.
            grads.append(None if saved is None else (saved * grad_total).to(dtype))
        return (*grads, None, None, None, None, None)


# ----------------------------------------------------------------------------------------------
# teacher rows


def _flat_rows(student_hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(hidden [B*L, H], masked row indices [N])`` on the hidden's device."""
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    return hidden, mask.reshape(-1).nonzero().squeeze(1).to(hidden.device)


def _teacher_source(
    teacher: Tensor | SparseTeacher, weight: Tensor | None, bias: Tensor | None, rows: Tensor, vocab: int,
    positions: int,
) -> Callable[[int, int, Tensor], Tensor]:
    """``teacher_of(start, stop, z_s)``: the teacher's ``[n, V]`` logits for masked rows ``start:stop``."""
    if isinstance(teacher, SparseTeacher):
        args = (teacher.logprobs, teacher.indices, teacher.tail_logprob)
        device = teacher.indices.device
        # Rows per position are selected like the student's; rows per masked token run 0..N-1.
        per_position = teacher.num_tokens == positions
        teacher_rows = rows.to(device) if per_position else torch.arange(rows.numel(), device=device)
        return lambda start, stop, z_s: teacher_chunk(teacher_rows[start:stop], *args, vocab=vocab, like=z_s)

    flat = teacher.detach().reshape(-1, teacher.shape[-1])
    teacher_rows = rows.to(flat.device)
    if weight is None:  # dense logits
        return lambda start, stop, z_s: teacher_chunk(teacher_rows[start:stop], flat, vocab=vocab, like=z_s)

    w, b = weight.detach(), bias.detach() if bias is not None else None

    def from_hidden(start: int, stop: int, z_s: Tensor) -> Tensor:
        with torch.no_grad():  # the teacher is a target, and its head may sit on another device
            return F.linear(flat.index_select(0, teacher_rows[start:stop]), w, b).to(z_s.device)

    return from_hidden


# ----------------------------------------------------------------------------------------------
# validation: every problem at once, before any computation


def _head_problems(func: str, hidden: object, weight: object, bias: object, mask: object) -> list[str]:
    problems = []
    mask_ok = isinstance(mask, Tensor) and mask.dtype == torch.bool
    if not mask_ok:
        problems.append(
            f"The 'mask' argument of {func} must be a bool tensor (e.g. labels != -100). "
            f"Got {getattr(mask, 'dtype', type(mask).__name__)}."
        )
    if not (isinstance(hidden, Tensor) and hidden.ndim >= 2 and hidden.dtype.is_floating_point):
        problems.append(
            f"The 'student_hidden' argument of {func} must be a float tensor [B, L, H] (or [B*L, H]). "
            f"Got {_describe(hidden)}."
        )
        return problems
    if mask_ok and not _leading_ok(hidden, mask):
        problems.append(
            f"The 'student_hidden' argument of {func} must be [*mask.shape, H] or [mask.numel(), H]. "
            f"Got {tuple(hidden.shape)} and mask {tuple(mask.shape)}."
        )
    if not (isinstance(weight, Tensor) and weight.ndim == 2 and weight.shape[1] == hidden.shape[-1]):
        problems.append(
            f"The 'student_weight' argument of {func} must be the head's weight [V, H] with "
            f"H = {hidden.shape[-1]} (student_hidden's last dim). Got {_describe(weight)}."
        )
    elif weight.dtype != hidden.dtype:
        problems.append(
            f"The 'student_weight' argument of {func} must have the dtype of 'student_hidden'. "
            f"Got {weight.dtype} and {hidden.dtype}: cast one of them (as the model's forward would)."
        )
    elif bias is not None and not (isinstance(bias, Tensor) and tuple(bias.shape) == (weight.shape[0],) and bias.dtype == weight.dtype):
        problems.append(f"The 'student_bias' argument of {func} must be None or [V] = [{weight.shape[0]}] of the weight's dtype. Got {_describe(bias)}.")
    return problems


def _teacher_problems(
    func: str, teacher: object, weight: object, bias: object, mask: object, student_weight: object,
    divergence: object, beta: object, alpha: object,
) -> list[str]:
    vocab = student_weight.shape[0] if isinstance(student_weight, Tensor) and student_weight.ndim == 2 else None
    mask_ok = isinstance(mask, Tensor) and mask.dtype == torch.bool
    slice_hint = " If one vocabulary is a padded copy of the other, slice both heads to the shared rows, e.g. weight[:V]."
    if isinstance(teacher, SparseTeacher):
        problems = sparse_teacher_problems(func, teacher, mask, vocab, divergence, beta, alpha)
        if weight is not None or bias is not None:
            problems.append(f"The 'teacher_weight' and 'teacher_bias' arguments of {func} must be None for a SparseTeacher.")
        return problems
    if not (isinstance(teacher, Tensor) and teacher.ndim >= 2 and teacher.dtype.is_floating_point):
        return [
            f"The 'teacher' argument of {func} must be the teacher's hidden states (with 'teacher_weight'), "
            f"dense logits or a SparseTeacher. Got {_describe(teacher)}."
        ]
    problems = []
    if mask_ok and not _leading_ok(teacher, mask):
        problems.append(
            f"The 'teacher' argument of {func} must be [*mask.shape, D] or [mask.numel(), D]. "
            f"Got {tuple(teacher.shape)} and mask {tuple(mask.shape)}."
        )
    if weight is None:
        if bias is not None:
            problems.append(f"The 'teacher_bias' argument of {func} needs 'teacher_weight' (the teacher's head).")
        if vocab is not None and teacher.shape[-1] != vocab:
            problems.append(
                f"The dense teacher logits given to {func} must have V = {vocab} logits (the student head's "
                f"rows). Got {teacher.shape[-1]}.{slice_hint}"
            )
        return problems
    if not (isinstance(weight, Tensor) and weight.ndim == 2 and weight.shape[1] == teacher.shape[-1]):
        problems.append(
            f"The 'teacher_weight' argument of {func} must be the teacher head's weight [V, Ht] with "
            f"Ht = {teacher.shape[-1]} (the teacher hidden states' last dim). Got {_describe(weight)}."
        )
    elif vocab is not None and weight.shape[0] != vocab:
        problems.append(
            f"The 'teacher_weight' argument of {func} must have V = {vocab} rows (the student head's). "
            f"Got {weight.shape[0]}.{slice_hint}"
        )
    elif weight.dtype != teacher.dtype:
        problems.append(
            f"The 'teacher_weight' argument of {func} must have the dtype of the teacher's hidden states. "
            f"Got {weight.dtype} and {teacher.dtype}."
        )
    elif bias is not None and not (isinstance(bias, Tensor) and tuple(bias.shape) == (weight.shape[0],) and bias.dtype == weight.dtype):
        problems.append(f"The 'teacher_bias' argument of {func} must be None or [V] = [{weight.shape[0]}] of the weight's dtype. Got {_describe(bias)}.")
    return problems


def _labels_problems(func: str, labels: object, mask: object) -> list[str]:
    if (isinstance(labels, Tensor) and isinstance(mask, Tensor) and labels.shape == mask.shape
            and not labels.dtype.is_floating_point and labels.dtype != torch.bool):
        return []
    return [
        f"The 'labels' argument of {func} must be an integer tensor shaped like 'mask'. "
        f"Got {_describe(labels)} and mask {_describe(mask)}."
    ]


def _chunk_problems(func: str, chunk_tokens: object) -> list[str]:
    if isinstance(chunk_tokens, int) and not isinstance(chunk_tokens, bool) and chunk_tokens >= 1:
        return []
    return [f"The 'chunk_tokens' argument of {func} must be an int >= 1. Got {chunk_tokens!r}."]


def _leading_ok(x: Tensor, mask: Tensor) -> bool:
    """``x`` is ``[*mask.shape, D]`` or the flattened ``[mask.numel(), D]``."""
    return x.shape[:-1] == mask.shape or tuple(x.shape[:-1]) == (mask.numel(),)


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
