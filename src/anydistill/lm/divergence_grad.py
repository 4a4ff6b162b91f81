r"""Closed-form gradients of the token divergences with respect to the student's logits, for the
fused LM head (:mod:`anydistill.lm.fused_head`).

Autograd through ``per_token_divergence`` keeps about 15 ``[n, V]`` temporaries per chunk for
``jsd`` (the stacked mixture, the logsumexp, both KL terms and what backward saves of each). The
gradients below need the two log-probabilities, the mixture and one exponential, computed in
place: about 5 ``[n, V]`` tensors. With :math:`s = \log\mathrm{softmax}(z_s/T)`,
:math:`t = \log\mathrm{softmax}(z_t/T)`, :math:`p_s = e^s`, :math:`p_t = e^t`, and the softmax
Jacobian :math:`\partial \ell / \partial z_s = p_s \odot (g - \langle g, p_s\rangle) / T` for
:math:`g = \partial \ell / \partial p_s`:

.. math::

    \mathrm{fkl} = \textstyle\sum p_t (t - s), & \quad \partial/\partial z_s = (p_s - p_t) / T \\
    \mathrm{rkl} = \textstyle\sum p_s (s - t), & \quad \partial/\partial z_s = p_s \odot (s - t - \mathrm{rkl}) / T \\
    \mathrm{jsd}_\beta = \beta \textstyle\sum p_t (t - m) + (1 - \beta) \sum p_s (s - m), & \quad
        \partial/\partial z_s = (1 - \beta)\, p_s \odot (s - m - \mathrm{kl}_s) / T

with :math:`m = \log(\beta p_t + (1 - \beta) p_s)` and :math:`\mathrm{kl}_s = \sum p_s (s - m)`
(:math:`\partial\,\mathrm{jsd}_\beta / \partial p_s = (1 - \beta)(s - m)`: the terms through
:math:`m` cancel). ``jsd`` at :math:`\beta = 0` / :math:`1` is ``fkl`` / ``rkl``, as in
``generalized_jsd``. The values are those of ``token_losses.per_token_divergence`` (same log-space
formulas, fp32 or fp64); the other divergences keep autograd.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

CLOSED_FORM = frozenset({"fkl", "rkl", "jsd"})


@torch.no_grad()
def divergence_and_grad(z_s: Tensor, z_t: Tensor, *, divergence: str, temperature: float, beta: float,
                        need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
    r"""Per-token divergence ``[n]`` of the student's logits ``z_s`` ``[n, V]`` from the teacher's
    ``z_t`` ``[n, V]`` (logits or log-probs), without the ``T^2`` factor, and its gradient
    :math:`\partial \sum_i D_i / \partial z_s` ``[n, V]`` (in ``z_s``'s dtype; None without
    ``need_grad``). ``divergence`` is one of `CLOSED_FORM`; computed in fp32 (fp64 for fp64 input).
    """
    if divergence == "jsd" and beta in (0, 1):
        divergence = "fkl" if beta == 0 else "rkl"
    dtype = torch.float64 if z_s.dtype == torch.float64 else torch.float32
    s = F.log_softmax(z_s.to(dtype) / temperature, dim=-1)
    t = F.log_softmax(z_t.to(dtype) / temperature, dim=-1)
    del z_t  # the caller's chunk of teacher logits is no longer needed (when this was its last reference)
    rowdot = lambda a, b: torch.einsum("nv,nv->n", a, b)  # noqa: E731  (row sums of a product, no [n, V] temporary)
    if divergence == "fkl":
        p_t = t.exp()
        value = rowdot(p_t, t.sub_(s))  # t := t - s
        grad = s.exp_().sub_(p_t) if need_grad else None
    elif divergence == "rkl":
        p_s = s.exp()
        t.neg_().add_(s)  # t := s - t
        value = rowdot(p_s, t)
        grad = t.sub_(value[:, None]).mul_(p_s) if need_grad else None
    elif divergence == "jsd":
        m = s + math.log1p(-beta)
        m = torch.logaddexp(m, t + math.log(beta), out=m)
        p_t = t.exp()
        kl_t = rowdot(p_t, t.sub_(m))
        del p_t, t
        p_s = s.exp()
        s.sub_(m)  # s := s - m
        del m
        kl_s = rowdot(p_s, s)
        value = beta * kl_t + (1 - beta) * kl_s
        grad = s.sub_(kl_s[:, None]).mul_(p_s).mul_(1 - beta) if need_grad else None
    else:
        raise ValueError(f"divergence_and_grad has no closed form for {divergence!r}; use one of {sorted(CLOSED_FORM)}.")
    if grad is not None:
        grad = grad.div_(temperature).to(z_s.dtype)
    return value, grad


@torch.no_grad()
def ce_and_grad(z_s: Tensor, targets: Tensor, *, need_grad: bool = True) -> tuple[Tensor, Tensor | None]:
    r"""``(-sum_i log softmax(z_s)_i[y_i], its gradient softmax(z_s) - onehot(y))``: the
    cross-entropy sum of ``[n, V]`` logits against ``targets`` ``[n]`` (as ``chunk_ce_sum``), in fp32
    (fp64 for fp64 input); the gradient in ``z_s``'s dtype, None without ``need_grad``."""
    dtype = torch.float64 if z_s.dtype == torch.float64 else torch.float32
    log_p = F.log_softmax(z_s.to(dtype), dim=-1)
    rows = torch.arange(targets.numel(), device=z_s.device)
    value = -log_p[rows, targets].sum()
    if not need_grad:
        return value, None
    grad = log_p.exp_()
    grad[rows, targets] -= 1
    return value, grad.to(z_s.dtype)
