r"""Policy-gradient pieces of sequence-level reverse-KL distillation (MiniLLM): pure tensor functions.

Shapes: per-token tensors are ``[B, T]``, aligned like the token losses (position ``t`` holds the
prediction of token ``t + 1`` of the sequence, ``mask[b, t]`` True where that token was generated).
Log-probabilities are of the *sampled* tokens, in fp32. Positions outside the mask may hold anything:
every function zeroes or ignores them.

The objective is :math:`\mathrm{KL}(q_\theta \| p)` over whole sequences ``y ~ q_θ(·|x)``, with the
student ``q_θ`` and the teacher ``p``. Its policy gradient (Gu et al. 2024) is

.. math::

    \nabla L = -\mathbb{E}_{y \sim q_\theta} \sum_t (R_t - 1)\, \nabla \log q_\theta(y_t \mid y_{<t}, x),
    \qquad R_t = \sum_{t' \ge t} \log \frac{p(y_{t'} \mid y_{<t'}, x)}{q_\theta(y_{t'} \mid y_{<t'}, x)}

built here from: the per-token rewards :math:`r_t = \log p(y_t) - \log q(y_t)` (`token_rewards`),
their discounted, length-normalised returns :math:`R_t` (`returns`), the importance weights of
teacher-mixed sampling (`importance_weights`), the PPO clipped surrogate (`ppo_surrogate`) and the
exact per-step reverse KL of the single-step decomposition (`single_step_rkl`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anydistill.core.checks import raise_problems
from anydistill.lm.token_losses import token_distill_loss


def token_logprobs(logits: Tensor, tokens: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""``log softmax(z / T)[y]`` ``[B, T]`` in fp32: the log-probability each model gave the token it
    is scored on.

    Args:
        logits: ``[B, T, V]``, aligned with ``tokens`` (``logits[:, :-1]`` of the full sequence).
        tokens: integer ``[B, T]`` (``input_ids[:, 1:]``).
        temperature: T dividing the logits.
    """
    z = logits.float() / temperature
    return z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


def token_rewards(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor, *, scaling: float = 1.0,
                  clip: float | None = None) -> Tensor:
    r"""Per-token rewards ``[B, T]``, zero outside the mask:

    .. math::

        r_t = \operatorname{clip}\Big(\frac{\log p(y_t) - \log q(y_t)}{s},\ -c,\ c\Big)

    with ``s = scaling`` and ``c = clip`` (MiniLLM's ``--reward-scaling 0.5``, ``--cliprange-reward
    100``; ``s = 1``, no clip is the plain log-ratio). Their sum is a one-sample estimate of
    :math:`-\mathrm{KL}(q \| p)` of the sequence (times ``1 / s``).

    Args:
        teacher_logprobs, student_logprobs: ``[B, T]`` of the sampled tokens (``q`` the policy that sampled them).
        mask: bool ``[B, T]``.
    """
    rewards = (teacher_logprobs - student_logprobs) / scaling
    if clip is not None:
        rewards = rewards.clamp(-clip, clip)
    return torch.where(mask, rewards, torch.zeros_like(rewards))


def returns(rewards: Tensor, mask: Tensor, *, gamma: float = 1.0, length_normalization: bool = True) -> Tensor:
    r"""Discounted reward-to-go ``[B, T]``, optionally normalised by the discounted length:

    .. math::

        R_t = \frac{\sum_{i \ge t} \gamma^{\,i-t}\, r_i}{\sum_{i \ge t} \gamma^{\,i-t}\, m_i}
        \ \text{(length normalisation)}, \qquad R_t = \sum_{i \ge t} \gamma^{\,i-t}\, r_i \ \text{(without)}

    over the masked positions ``m``. With ``gamma = 1`` the denominator is the number of tokens left,
    the paper's length-normalised :math:`R^{\mathrm{Norm}}` and MiniLLM's official code (``losses.py``
    ``_get_advantages_and_returns``); with ``gamma = 0`` it is the per-token reward :math:`r_t`, the
    default of TRL's ``MiniLLMTrainer``, whose ``_compute_advantage`` normalises by the same
    discounted length. Positions outside the mask get 0.

    Computed as one ``[T, T]`` matrix product (no ``gamma ** i`` factor that underflows over long
    sequences).

    Args:
        rewards: ``[B, T]``, zero outside the mask (`token_rewards`).
        mask: bool ``[B, T]``.
        gamma: discount in ``[0, 1]``.
        length_normalization: divide by the discounted number of remaining tokens.
    """
    problems = []
    if not 0 <= gamma <= 1:
        problems.append(f"The 'gamma' argument of returns must be in [0, 1]. Got {gamma!r}.")
    if rewards.shape != mask.shape or rewards.ndim != 2:
        problems.append(f"The 'rewards' and 'mask' arguments of returns must both be [B, T]. "
                        f"Got {tuple(rewards.shape)} and {tuple(mask.shape)}.")
    raise_problems(problems)
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    position = torch.arange(rewards.shape[1], device=rewards.device)
    ahead = position[None, :] - position[:, None]  # [t, i] = i - t
    # discount[t, i] = gamma^(i - t) for i >= t, else 0; 0^0 = 1 keeps r_t itself when gamma = 0.
    powers = torch.full(ahead.shape, float(gamma), dtype=torch.float64, device=rewards.device).pow(ahead.clamp(min=0))
    discount = torch.where(ahead >= 0, powers, torch.zeros_like(powers)).to(dtype)
    valid = mask.to(dtype)
    to_go = (rewards.to(discount.dtype) * valid) @ discount.T
    if length_normalization:
        length = valid @ discount.T
        to_go = to_go / length.clamp(min=torch.finfo(length.dtype).tiny)
    return torch.where(mask, to_go, torch.zeros_like(to_go))


def whiten(values: Tensor, mask: Tensor, *, eps: float = 1e-8) -> Tensor:
    r"""``(x - mean) / sqrt(var + eps)`` ``[B, T]`` with the mean and unbiased variance of the masked
    entries; 0 outside the mask.

    MiniLLM's code whitens the advantages of each minibatch (``utils.whiten``, ``torch.var_mean``:
    the unbiased variance) over the whole ``[B, T]`` tensor, padding included; here only the masked
    tokens count. Fewer than two masked entries: centred only.
    """
    count = mask.sum()
    if int(count) == 0:
        return torch.zeros_like(values)
    picked = values[mask]
    mean = picked.mean()
    var = picked.var() if picked.numel() > 1 else torch.zeros_like(mean)
    out = (values - mean) * torch.rsqrt(var + eps)
    return torch.where(mask, out, torch.zeros_like(out))


def mixture_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float) -> Tensor:
    r""":math:`\log \tilde p(y_t) = \log\big(\alpha\, p(y_t) + (1 - \alpha)\, q(y_t)\big)` ``[B, T]``,
    the teacher-mixed sampling distribution at the sampled tokens (in log space: no ``log 0``)."""
    if alpha == 0:
        return student_logprobs
    if alpha == 1:
        return teacher_logprobs
    return torch.logaddexp(teacher_logprobs + math.log(alpha), student_logprobs + math.log1p(-alpha))


def importance_weights(student_logprobs: Tensor, teacher_logprobs: Tensor, alpha: float) -> Tensor:
    r"""Per-token importance weights ``[B, T]`` of the paper's teacher-mixed sampling:

    .. math::

        w_t = \frac{q_\theta(y_t \mid y_{<t}, x)}{\tilde p(y_t \mid y_{<t}, x)},
        \qquad \tilde p = \alpha\, p + (1 - \alpha)\, q_\theta

    the per-step ratio the paper uses in place of the product over the prefix (lower variance,
    biased). They are bounded by :math:`1 / (1 - \alpha)` and clipped further inside the PPO
    surrogate (`ppo_surrogate`), as in the official code (``ratio * w`` is what is clipped).
    ``alpha = 0`` gives 1.
    """
    return torch.exp(student_logprobs - mixture_logprobs(student_logprobs, teacher_logprobs, alpha))


def ppo_surrogate(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, weights: Tensor, mask: Tensor, *,
                  clip_range: float = 0.2) -> tuple[Tensor, int]:
    r"""Sum over the masked tokens of the PPO clipped surrogate with importance weights, and their count:

    .. math::

        \ell_t = \max\!\big(-A_t\, \rho_t w_t,\ -A_t\, \operatorname{clip}(\rho_t w_t,\, 1-\epsilon,\, 1+\epsilon)\big),
        \qquad \rho_t = \frac{q_\theta(y_t)}{q_{\theta_\mathrm{old}}(y_t)}

    MiniLLM's ``losses.py::_pg_loss``. Its gradient at :math:`\theta = \theta_\mathrm{old}` (the
    first inner epoch, unclipped) is :math:`-\sum_t w_t A_t \nabla \log q_\theta(y_t)`, the
    sampled term of the policy gradient. Gradients flow into ``logprobs`` only.

    Args:
        logprobs: ``[B, T]`` of the sampled tokens under the current student (with graph).
        old_logprobs: ``[B, T]`` under the student that sampled (detached).
        advantages: ``[B, T]``, e.g. whitened `returns` (detached).
        weights: ``[B, T]`` importance weights (`importance_weights`; ones for pure student sampling).
        mask: bool ``[B, T]``.
        clip_range: epsilon.

    Returns:
        ``(loss_sum, num_tokens)``, the normalisation contract of :mod:`anydistill.lm.token_losses`.
    """
    ratio = torch.exp(torch.where(mask, logprobs.float() - old_logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32)))
    ratio = ratio * weights.detach()
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    return torch.where(mask, per_token, torch.zeros_like(per_token)).sum(), int(mask.sum())


def single_step_rkl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *,
                    temperature: float = 1.0) -> tuple[Tensor, int]:
    r"""The single-step part of the paper's gradient decomposition: the exact reverse KL of each step
    over the vocabulary, summed over the masked tokens, and their count,

    .. math::

        \sum_t \mathrm{KL}\big(q_\theta(\cdot \mid y_{<t}, x) \,\|\, p(\cdot \mid y_{<t}, x)\big)
        = \sum_t \big(H(q_\theta^{(t)}, p^{(t)}) - H(q_\theta^{(t)})\big)

    (the official ``reg_loss``: cross-entropy minus entropy; TRL's ``_single_step_decomposition_loss``).
    Its gradient replaces the high-variance sampled estimate of the per-step term. It *is*
    ``token_distill_loss(divergence="rkl")`` (masked, chunked, fp32), so it is GKD's loss at ``beta = 1``.
    """
    return token_distill_loss(student_logits, teacher_logits, mask, divergence="rkl", temperature=temperature)


def rollout_reverse_kl(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor) -> Tensor:
    r"""Per-token estimate ``[B, T]`` of the reverse KL from samples of ``q``, always ``>= 0``:
    :math:`e^{\Delta} - 1 - \Delta`, :math:`\Delta = \log p - \log q` (the official code's
    ``get_rev_kl``, for logging). 0 outside the mask."""
    delta = torch.where(mask, teacher_logprobs - student_logprobs, torch.zeros_like(teacher_logprobs))
    return torch.expm1(delta) - delta
