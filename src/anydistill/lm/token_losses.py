r"""Token-level distillation losses for language models: masked, chunked, fp32, globally normalised.

Shapes: ``student_logits`` is ``[B, L, V]`` (any leading dims work: ``[..., V]``), ``mask`` is a
bool ``[B, L]`` that is True where the logits predict a completion token. The logits and the mask
are already aligned: for a Hugging Face causal LM that is ``logits[:, :-1]`` with
``mask = labels[:, 1:] != -100``. The teacher is either dense logits of the student's shape or a
:class:`~anydistill.lm.topk.SparseTeacher`.

**Divergences** (per token, with :math:`p_t = \mathrm{softmax}(z_t / T)`,
:math:`p_s = \mathrm{softmax}(z_s / T)`):

=========  ======================================================================================
``fkl``    :math:`\mathrm{KL}(p_t \| p_s)`, forward KL, mode-covering
``rkl``    :math:`\mathrm{KL}(p_s \| p_t)`, reverse KL, mode-seeking
``jsd``    generalized JSD of GKD, :math:`\beta\,\mathrm{KL}(p_t\|m) + (1-\beta)\,\mathrm{KL}(p_s\|m)`,
           :math:`m = \beta p_t + (1-\beta) p_s`, with TRL's endpoints: ``beta=0`` is ``fkl``,
           ``beta=1`` is ``rkl``
``skl``    DistiLLM skew KL, :math:`\mathrm{KL}(p_t \| \alpha p_t + (1-\alpha) p_s)`
``srkl``   DistiLLM skew reverse KL, :math:`\mathrm{KL}(p_s \| \alpha p_s + (1-\alpha) p_t)`
``tvd``    total variation, :math:`\tfrac12 \sum_v |p_t - p_s|`
=========  ======================================================================================

``fkl``, ``rkl``, ``jsd`` and ``tvd`` are :mod:`anydistill.losses.divergences` applied per chunk.
The skew mixtures follow DistiLLM's official code (``jongwooko/distillm``,
``distillm/losses.py::skewed_forward_kl / skewed_reverse_kl``, ``--skew-alpha 0.1``): in both,
``alpha`` weights the distribution the KL is taken *from*, so ``alpha = 0`` gives plain ``fkl`` /
``rkl``. Two differences from that code, neither changing the gradient: DistiLLM's
``skewed_forward_kl`` returns the cross-entropy :math:`-\sum p_t \log m` (the KL plus the constant
teacher entropy :math:`H(p_t)`), we return the KL itself; and we form the mixture in log space
(logsumexp) instead of ``log(alpha * p + ...)``, which cannot hit ``log 0``.

**Temperature.** ``T`` divides *both* logits before the softmax (TRL ``DistillationTrainer``,
ModelOpt). ``scale_by_t2=True`` multiplies every per-token value by :math:`T^2` (Hinton scaling,
as DistillKit does); it is off by default, so ``T = 1`` is TRL ``GKDTrainer``'s loss. A sparse
teacher is reconstructed at ``T = 1`` and then tempered as ``log_softmax(log p / T)`` (see
:mod:`anydistill.lm.topk`).

**Normalisation contract.** :func:`token_distill_loss` and :func:`token_ce_loss` return the *sum*
over the masked tokens of this micro-batch and their count, never a mean. The caller divides by the
number of completion tokens of the whole optimisation step (every gradient-accumulation
micro-batch, all-reduced over DDP ranks), with :func:`normalize`::

    n_global = sum of num_tokens over the accumulation micro-batches, all_reduce(SUM) over ranks
    loss = normalize(loss_sum, n_global, world_size=world_size)   # per micro-batch, then backward

Then every token weighs the same, and one big batch and the same batch split into micro-batches
(or ranks) give the same gradient. Dividing each micro-batch by its own count instead weighs a
token of a short micro-batch more (``huggingface/trl#4719``). An empty mask gives ``(0, 0)``, and
``normalize(0, 0) = 0``: no NaN (``microsoft/LMOps#38``).

**Memory.** The masked rows are selected first (one device sync), then processed ``chunk_tokens``
rows at a time: the fp32 temporaries are ``[chunk_tokens, V]``. When gradients are needed each
chunk runs under activation checkpointing (recomputed in backward), so the autograd graph holds no
fp32 ``[N, V]`` tensor either; a sparse teacher is densified one chunk at a time (and may live on
another device, e.g. a CPU cache for a GPU student). The gradient of the student logits is
allocated once, in their dtype.
"""

from __future__ import annotations

import difflib
import math
import numbers
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from anydistill.core.checks import is_finite_number, raise_problems
from anydistill.lm.topk import SparseTeacher, densify_rows, index_problems
from anydistill.losses.divergences import generalized_jsd, kd_kl, reverse_kl, tvd

DIVERGENCES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")

# Reconstructed teacher tokens with probability 0 (a tail-less SparseTeacher) have log-prob -inf,
# which turns F.kl_div's 0 * (-inf) into NaN. A finite floor keeps exp() at exactly 0 (and stays
# finite after dividing by any sane temperature), so those tokens contribute 0 to every divergence
# whose value is finite; the ones that are infinite there are refused in `_validate`.
_ZERO_MASS_LOGPROB = -1e20


def token_distill_loss(
    student_logits: Tensor,
    teacher: Tensor | SparseTeacher,
    mask: Tensor,
    *,
    divergence: str,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    scale_by_t2: bool = False,
    chunk_tokens: int = 4096,
    normalizer: int | Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, int]:
    r"""Sum of a per-token divergence over the masked tokens, and their count.

    .. math::

        \text{loss\_sum} = \sum_{(b, l):\, \text{mask}_{b,l}} w_{b,l}\, c_T \, D\big(p_t^{(b,l)}, p_s^{(b,l)}\big),
        \qquad c_T = T^2 \text{ if scale\_by\_t2 else } 1

    Args:
        student_logits: ``[B, L, V]`` (or ``[..., V]``), any float dtype; gradients flow into it.
        teacher: dense logits of the same shape (detached), or a ``SparseTeacher`` whose rows are
            either every position (``B * L`` rows, row-major) or only the masked ones
            (``mask.sum()`` rows, in row-major order, as a cache of completion tokens stores them).
        mask: bool ``[B, L]`` (the leading dims of ``student_logits``); True = completion token.
        divergence: one of ``fkl``, ``rkl``, ``jsd``, ``skl``, ``srkl``, ``tvd`` (module docstring).
        temperature: :math:`T > 0`, divides both logits.
        beta: ``jsd`` only, :math:`\beta \in [0, 1]`, the teacher's weight in the mixture.
        alpha: ``skl`` / ``srkl`` only, :math:`\alpha \in [0, 1]` (DistiLLM default 0.1).
        scale_by_t2: multiply by :math:`T^2`.
        chunk_tokens: masked tokens processed at once (memory ``~ chunk_tokens * V`` fp32 floats).
        normalizer: optional global token count; if given, the first value returned is already
            ``normalize(loss_sum, normalizer)`` (a shortcut for single-rank, no-accumulation use
            or a count known in advance).
        weights: optional ``[B, L]`` per-token weights :math:`w` (detached; 1 when None), e.g.
            IW-OPD's (`lm.iw_opd`).

    Returns:
        ``(loss_sum, num_tokens)``: a 0-dim fp32 tensor (fp64 for fp64 logits), connected to the
        student's graph even when the mask is empty (then it is 0, with zero gradients, so DDP
        sees every parameter used), and the number of masked tokens as an int.
    """
    _validate(student_logits, teacher, mask, divergence, temperature, beta, alpha, chunk_tokens)
    vocab = student_logits.shape[-1]
    flat_student = student_logits.reshape(-1, vocab)
    rows = mask.reshape(-1).nonzero().squeeze(1).to(student_logits.device)
    num_tokens = rows.numel()
    # sum of an empty slice: 0, in the graph, with an all-zero gradient and no NaN.
    loss_sum = _upcast(flat_student[:0]).sum()

    per_chunk = partial(
        _chunk_divergence, divergence=divergence, temperature=temperature, beta=beta, alpha=alpha,
        vocab=vocab,
    )
    if isinstance(teacher, SparseTeacher):
        # Sparse rows per position are selected like the student's; rows per masked token run 0..N-1.
        teacher_rows = rows.to(teacher.indices.device) if teacher.num_tokens == mask.numel() else None
        teacher_args = (teacher.logprobs, teacher.indices, teacher.tail_logprob)
    else:
        teacher_rows = rows
        teacher_args = (teacher.detach().reshape(-1, vocab),)

    needs_grad = torch.is_grad_enabled() and student_logits.requires_grad
    for start in range(0, num_tokens, chunk_tokens):
        s_rows = rows[start : start + chunk_tokens]
        if teacher_rows is None:
            t_rows = torch.arange(start, start + s_rows.numel(), device=teacher.indices.device)
        else:
            t_rows = teacher_rows[start : start + chunk_tokens]
        if needs_grad:
            # Recompute the chunk in backward instead of keeping its fp32 [chunk, V] activations.
            per_token = checkpoint(
                per_chunk, flat_student, s_rows, t_rows, *teacher_args,
                use_reentrant=False, preserve_rng_state=False,
            )
        else:
            per_token = per_chunk(flat_student, s_rows, t_rows, *teacher_args)
        if weights is not None:
            per_token = per_token * weights.detach().reshape(-1).to(per_token)[s_rows]
        loss_sum = loss_sum + per_token.sum()

    if scale_by_t2:
        loss_sum = loss_sum * temperature**2
    if normalizer is not None:
        loss_sum = normalize(loss_sum, normalizer)
    return loss_sum, num_tokens


def token_ce_loss(
    student_logits: Tensor, labels: Tensor, mask: Tensor, *, chunk_tokens: int = 4096
) -> tuple[Tensor, int]:
    r"""Hard-label cross-entropy summed over the masked tokens, and their count (T = 1).

    .. math::

        \text{ce\_sum} = -\sum_{(b, l):\, \text{mask}_{b,l}} \log p_s(y_{b,l})

    Same masking, chunking, fp32 and normalisation contract as :func:`token_distill_loss`, so the
    usual mixture is ``(1 - a) * normalize(ce_sum, n) + a * normalize(kd_sum, n)`` with the same
    global count ``n``.

    Args:
        student_logits: ``[B, L, V]`` (or ``[..., V]``).
        labels: integer ``[B, L]``, the target token of each position (aligned like the mask);
            values outside the mask are ignored (e.g. ``-100``).
        mask: bool ``[B, L]``.
        chunk_tokens: masked tokens processed at once.

    Returns:
        ``(ce_sum, num_tokens)`` as for :func:`token_distill_loss`.
    """
    problems = _check_mask(student_logits, mask, "token_ce_loss")
    if labels.shape != mask.shape or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        problems.append(
            "The 'labels' argument of token_ce_loss must be an integer tensor shaped like 'mask'. "
            f"Got {labels.dtype} {tuple(labels.shape)} and mask {tuple(mask.shape)}."
        )
    problems += _check_chunk(chunk_tokens, "token_ce_loss")
    raise_problems(problems)
    vocab = student_logits.shape[-1]
    flat_student = student_logits.reshape(-1, vocab)
    rows = mask.reshape(-1).nonzero().squeeze(1).to(student_logits.device)
    targets = labels.reshape(-1).to(student_logits.device)
    num_tokens = rows.numel()
    loss_sum = _upcast(flat_student[:0]).sum()
    needs_grad = torch.is_grad_enabled() and student_logits.requires_grad
    for start in range(0, num_tokens, chunk_tokens):
        s_rows = rows[start : start + chunk_tokens]
        if needs_grad:
            chunk_sum = checkpoint(
                _chunk_ce, flat_student, s_rows, targets, use_reentrant=False, preserve_rng_state=False
            )
        else:
            chunk_sum = _chunk_ce(flat_student, s_rows, targets)
        loss_sum = loss_sum + chunk_sum
    return loss_sum, num_tokens


def normalize(loss_sum: Tensor, num_tokens_global: int | Tensor, *, world_size: int = 1) -> Tensor:
    r"""Turn a per-micro-batch loss sum into its share of the step's per-token mean.

    .. math::

        \text{loss} = \text{world\_size} \cdot \frac{\text{loss\_sum}}{\max(N_\text{global}, 1)}

    ``num_tokens_global`` is the number of completion tokens of the whole optimisation step: summed
    over the gradient-accumulation micro-batches and all-reduced (SUM) over the DDP ranks. Then the
    gradients accumulated over the micro-batches equal those of the mean over one big batch.
    DDP *averages* gradients over ranks, which would divide by the world size a second time:
    pass ``world_size`` (the number of ranks) to undo it (HF Trainer does the same with
    ``average_tokens_across_devices``). A count of 0 (every token masked) gives 0, not NaN.

    Args:
        loss_sum: the first value returned by :func:`token_distill_loss` or :func:`token_ce_loss`.
        num_tokens_global: int or 0-dim tensor (e.g. straight from ``all_reduce``), ``>= 0``.
        world_size: number of DDP ranks whose gradients are averaged; 1 without DDP.
    """
    problems = []
    if not (isinstance(world_size, int) and not isinstance(world_size, bool) and world_size >= 1):
        problems.append(f"The 'world_size' argument of normalize must be an int >= 1. Got {world_size!r}.")
    if isinstance(num_tokens_global, Tensor):
        if num_tokens_global.numel() != 1:
            problems.append(
                "The 'num_tokens_global' argument of normalize must be a single count. "
                f"Got shape {tuple(num_tokens_global.shape)}."
            )
        raise_problems(problems)
        count = num_tokens_global.reshape(()).to(loss_sum.device, loss_sum.dtype).clamp(min=1)
        return loss_sum * world_size / count
    if not (isinstance(num_tokens_global, numbers.Integral) and not isinstance(num_tokens_global, bool)
            and num_tokens_global >= 0):
        problems.append(
            "The 'num_tokens_global' argument of normalize must be an int >= 0 (the completion "
            f"tokens of the whole step, over accumulation and ranks). Got {num_tokens_global!r}."
        )
    raise_problems(problems)
    return loss_sum * world_size / max(int(num_tokens_global), 1)


# ----------------------------------------------------------------------------------------------
# per-chunk computation (run under checkpoint: everything it allocates is freed after the chunk)


def _chunk_divergence(
    flat_student: Tensor, s_rows: Tensor, t_rows: Tensor, *teacher_args: Tensor,
    divergence: str, temperature: float, beta: float, alpha: float, vocab: int,
) -> Tensor:
    """Per-token divergence ``[chunk]`` of the student rows ``s_rows`` against the teacher rows."""
    z_s = flat_student.index_select(0, s_rows)
    z_t = teacher_chunk(t_rows, *teacher_args, vocab=vocab, like=z_s)
    return per_token_divergence(z_s, z_t, divergence=divergence, temperature=temperature, beta=beta, alpha=alpha)


def teacher_chunk(t_rows: Tensor, *teacher_args: Tensor, vocab: int, like: Tensor) -> Tensor:
    """The teacher's ``[n, V]`` logits (dense) or reconstructed log-probs (sparse) of rows ``t_rows``.

    ``teacher_args`` is ``(flat_logits [M, V],)`` or a sparse teacher's ``(logprobs, indices, tail)``;
    ``like`` is the student's chunk (its device and, for fp64, its dtype).
    """
    if len(teacher_args) == 1:  # dense logits
        return teacher_args[0].index_select(0, t_rows)
    # sparse: reconstruct this chunk's log-probs (T = 1); they serve as logits below,
    # so log_softmax(log p / T) is exactly the documented temperature rule.
    logprobs, indices, tail = teacher_args
    # Select and move the chunk first (a CPU cache can feed a GPU student), then densify there.
    z_t = densify_rows(
        logprobs.index_select(0, t_rows).to(like.device),
        indices.index_select(0, t_rows).to(like.device),
        tail.index_select(0, t_rows).to(like.device) if tail is not None else None,
        vocab,
    ).clamp(min=_ZERO_MASS_LOGPROB)
    return z_t.double() if like.dtype == torch.float64 else z_t


def per_token_divergence(
    z_s: Tensor, z_t: Tensor, *, divergence: str, temperature: float, beta: float, alpha: float
) -> Tensor:
    """The divergence ``[n]`` of each row of student logits ``z_s`` [n, V] from the teacher's ``z_t``
    [n, V] (logits or log-probs, detached here), without the ``T^2`` factor (module docstring)."""
    if divergence == "fkl":
        return kd_kl(z_s, z_t, temperature=temperature, scale_by_t2=False, reduction="none")
    if divergence == "rkl":
        return reverse_kl(z_s, z_t, temperature=temperature, scale_by_t2=False, reduction="none")
    if divergence == "jsd":
        return generalized_jsd(z_s, z_t, beta=beta, temperature=temperature, reduction="none")
    if divergence == "tvd":
        return tvd(z_s, z_t, temperature=temperature, reduction="none")
    log_p_s = F.log_softmax(_upcast(z_s) / temperature, dim=-1)
    log_p_t = F.log_softmax(_upcast(z_t.detach()) / temperature, dim=-1)
    if divergence == "skl":
        return _skew_kl(log_p_t, log_p_s, alpha)
    return _skew_kl(log_p_s, log_p_t, alpha)  # srkl


def _skew_kl(log_p: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    r""":math:`\mathrm{KL}(p \,\|\, \alpha p + (1 - \alpha) q)` per row, the mixture in log space."""
    if alpha == 0:
        log_m = log_q
    elif alpha == 1:
        log_m = log_p
    else:
        log_m = torch.logsumexp(torch.stack([log_p + math.log(alpha), log_q + math.log1p(-alpha)]), dim=0)
    # F.kl_div(input, target) is KL(target || input).
    return F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1)


def _chunk_ce(flat_student: Tensor, s_rows: Tensor, targets: Tensor) -> Tensor:
    return chunk_ce_sum(flat_student.index_select(0, s_rows), targets.index_select(0, s_rows))


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """``[B, L]`` :math:`\log \mathrm{softmax}(z / T)[y]` of logits ``[B, L, V]`` at tokens ``[B, L]``, in
    fp32 (fp64 kept); differentiable in ``logits``."""
    return F.log_softmax(_upcast(logits) / temperature, dim=-1).gather(-1, tokens.unsqueeze(-1).to(logits.device)).squeeze(-1)


def chunk_ce_sum(z_s: Tensor, targets: Tensor) -> Tensor:
    """``-sum log softmax(z_s)[y]`` over the rows of ``z_s`` [n, V], targets ``y`` [n], in fp32."""
    return F.cross_entropy(_upcast(z_s), targets, reduction="sum")


# ----------------------------------------------------------------------------------------------
# validation: every problem at once, before any computation


def _validate(
    student_logits: Tensor, teacher: object, mask: Tensor, divergence: object,
    temperature: object, beta: object, alpha: object, chunk_tokens: object,
) -> None:
    problems = _check_mask(student_logits, mask, "token_distill_loss")
    problems += divergence_problems("token_distill_loss", divergence, temperature, beta, alpha, chunk_tokens)
    vocab = student_logits.shape[-1] if student_logits.ndim else None

    if isinstance(teacher, SparseTeacher):
        problems += sparse_teacher_problems("token_distill_loss", teacher, mask, vocab, divergence, beta, alpha)
    elif isinstance(teacher, Tensor):
        if teacher.shape != student_logits.shape:
            hint = ""
            if teacher.shape[:-1] == student_logits.shape[:-1]:
                hint = (
                    " The vocabularies differ: if one is a padded copy of the other (same tokenizer), "
                    "slice both to the shared prefix, e.g. teacher_logits[..., :V]."
                )
            problems.append(
                "The 'teacher' argument of token_distill_loss must have the shape of "
                f"'student_logits'. Got {tuple(teacher.shape)} and "
                f"{tuple(student_logits.shape)}.{hint}"
            )
    else:
        problems.append(
            "The 'teacher' argument of token_distill_loss must be dense logits (a Tensor) or a "
            f"SparseTeacher. Got {type(teacher).__name__}."
        )
    raise_problems(problems)


def divergence_problems(
    func: str, divergence: object, temperature: object, beta: object, alpha: object, chunk_tokens: object
) -> list[str]:
    """The problems of the divergence's hyperparameters, worded for the function ``func``."""
    problems = []
    if divergence not in DIVERGENCES:
        close = difflib.get_close_matches(str(divergence), DIVERGENCES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        problems.append(
            f"The 'divergence' argument of {func} must be one of {DIVERGENCES}. "
            f"Got {divergence!r}.{hint}"
        )
    if not (is_finite_number(temperature) and temperature > 0):
        problems.append(
            f"The 'temperature' argument of {func} must be a finite number > 0. "
            f"Got {temperature!r}."
        )
    for name, value in (("beta", beta), ("alpha", alpha)):
        if not (is_finite_number(value) and 0 <= value <= 1):
            problems.append(f"The '{name}' argument of {func} must be in [0, 1]. Got {value!r}.")
    return problems + _check_chunk(chunk_tokens, func)


def sparse_teacher_problems(
    func: str, teacher: SparseTeacher, mask: object, vocab: int | None, divergence: object,
    beta: object, alpha: object,
) -> list[str]:
    """The problems of a ``SparseTeacher`` against the mask and the vocabulary ``V`` (one device sync)."""
    problems = []
    mask_ok = isinstance(mask, Tensor) and mask.dtype == torch.bool
    num_masked = int(mask.sum()) if mask_ok else None
    if mask_ok and teacher.num_tokens not in (mask.numel(), num_masked):
        problems.append(
            f"The SparseTeacher given to {func} must have one row per position "
            f"({mask.numel()}) or one per masked token ({num_masked}). Got {teacher.num_tokens} "
            "rows: was it built from another batch or another mask?"
        )
    if vocab is not None and teacher.k > vocab:
        problems.append(
            f"The SparseTeacher given to {func} has k={teacher.k} > the student's "
            f"vocabulary V={vocab}."
        )
    elif vocab is not None:
        problems += index_problems(teacher, vocab, func)
    infinite = (
        divergence == "rkl"
        or (divergence == "jsd" and beta == 1)
        or (divergence == "srkl" and alpha == 0)
    )
    if infinite and not teacher.has_tail and vocab is not None and teacher.k < vocab:
        problems.append(
            f"The divergence {divergence!r} (beta={beta}, alpha={alpha}) is infinite against a "
            "SparseTeacher without a tail bucket: the renormalised top-k gives probability 0 "
            "to tokens the student supports. Build it with sparsify(..., tail=True), or use "
            "'fkl', 'skl', 'tvd', 'jsd' with beta < 1 or 'srkl' with alpha > 0."
        )
    return problems


def _check_mask(student_logits: Tensor, mask: Tensor, func: str) -> list[str]:
    problems = []
    if student_logits.ndim < 2:
        problems.append(
            f"The 'student_logits' argument of {func} must have shape [B, L, V] (or [..., V]). "
            f"Got {tuple(student_logits.shape)}."
        )
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        problems.append(
            f"The 'mask' argument of {func} must be a bool tensor (e.g. labels != -100). "
            f"Got {getattr(mask, 'dtype', type(mask).__name__)}."
        )
    elif mask.shape != student_logits.shape[:-1]:
        problems.append(
            f"The 'mask' argument of {func} must have the shape of 'student_logits' without the "
            f"vocabulary dim. Got {tuple(mask.shape)} and logits {tuple(student_logits.shape)}."
        )
    return problems


def _check_chunk(chunk_tokens: object, func: str) -> list[str]:
    if isinstance(chunk_tokens, int) and not isinstance(chunk_tokens, bool) and chunk_tokens >= 1:
        return []
    return [f"The 'chunk_tokens' argument of {func} must be an int >= 1. Got {chunk_tokens!r}."]


def _upcast(x: Tensor) -> Tensor:
    """Compute in at least fp32: half and bfloat16 are upcast, fp64 is kept."""
    return x if x.dtype == torch.float64 else x.float()


