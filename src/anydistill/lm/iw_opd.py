r"""IW-OPD (Xie et al., "On the Position Bias of On-Policy Distillation", arXiv 2606.22600; TRL PR
#6191, ``trl/experimental/iw_opd``): on-policy token weights from the prefix discrepancy between
student and teacher.

For a sampled completion :math:`y_1 \dots y_T` with the sampled tokens' log-probabilities of the
teacher :math:`\log p(y_t)` and of the student that sampled them :math:`\log q(y_t)` (both at the
sampling temperature), the OPD advantage and the weights are

.. math::

    A_t = \log p(y_t) - \log q(y_t), \qquad
    F_{t-1} = \frac{\sum_{k<t} |A_k|}{\max(\sum_k |A_k|, \epsilon)}, \qquad
    w_t = 1 + \gamma\,(1 - F_{t-1})

per sequence, all detached: tokens before the student's prefix has drifted far from the teacher's
keep weight up to :math:`1 + \gamma`, those after it fall towards 1. The weights are not renormalised.
IW-OPD's own loss is the sampled-token policy gradient of the reverse KL,
:math:`\ell_t = -\log q_\theta(y_t)\, w_t A_t` (`sampled_opd_loss`); ``gkd`` can also weight its
exact per-token divergence by :math:`w_t` (``token_weighting: iw-opd``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def opd_advantages(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``[B, T]`` :math:`A_t = \\log p(y_t) - \\log q(y_t)` on the masked tokens (0 elsewhere), detached."""
    return torch.where(mask, (teacher_logprobs - student_logprobs).detach(), 0.0)


def iw_opd_weights(advantages: Tensor, mask: Tensor, gamma: float, eps: float = 1e-8) -> Tensor:
    """``[B, T]`` IW-OPD weights :math:`w_t = 1 + \\gamma (1 - F_{t-1})` from the advantages ``[B, T]``
    (masked tokens only count; a position outside ``mask`` gets 1), detached.

    Example (TRL's unit test): A = [0.2, -0.3, 0.5], gamma 0.5 -> w = [1.5, 1.4, 1.25].
    """
    magnitude = torch.where(mask, advantages.detach().abs(), 0.0)
    before = magnitude.cumsum(dim=1) - magnitude  # exclusive: the mass spent before token t
    total = magnitude.sum(dim=1, keepdim=True).clamp_min(eps)
    return torch.where(mask, 1.0 + gamma * (1.0 - before / total), 1.0)


def sampled_opd_loss(student_logprobs: Tensor, advantages: Tensor, weights: Tensor, mask: Tensor) -> tuple[Tensor, int]:
    """``(sum over masked tokens of -log q(y_t) * w_t * A_t, their count)``: IW-OPD's policy-gradient
    surrogate (its value is not a divergence; its gradient is). ``student_logprobs`` ``[B, T]`` carries the graph."""
    per_token = -student_logprobs * (weights * advantages).detach()
    return torch.where(mask, per_token, 0.0).sum(), int(mask.sum())
