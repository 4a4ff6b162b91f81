r"""Differentiable rewards ``reward(x, cond) -> [B]`` for reward-tuned and preference methods
(Flash-DMD's joint RL, PSO, Distillation-DPO), on the toy data where the true preference is known.

* `ModePreference` (2-D mixtures): the share of a sample's responsibility on the preferred modes,
  :math:`r(x) = \sum_{k \in P} e^{-\lVert x-\mu_k\rVert^2/2s^2} / \sum_k e^{-\lVert x-\mu_k\rVert^2/2s^2}
  \in [0, 1]`: the true preference (a width ``s`` wider than the modes' own std keeps its gradient
  alive between modes).
* `proxy_reward` (2-D): an MLP fitted to a true reward on data samples only. It agrees with it on the
  data and extrapolates freely off it, so a generator tuned on it alone can raise the proxy while the
  true reward falls (reward hacking, what Flash-DMD's joint distillation is claimed to prevent).
* `ink_reward` (8x8 digits): the logit of a "bold" classifier trained here on the digits whose ink
  (mean intensity) is above the training split's median: a learned, differentiable stroke-weight score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ModePreference(nn.Module):
    """The share of a 2-D sample's responsibility on the ``preferred`` modes, in [0, 1].

    Args:
        modes: ``[K, 2]`` mode centres; std: the width ``s`` of the responsibilities; preferred: the indices in ``P``.
    """

    def __init__(self, modes: Tensor, std: float, preferred: list[int]):
        super().__init__()
        if not preferred or not all(0 <= k < modes.shape[0] for k in preferred):
            raise ValueError(f"ModePreference needs preferred modes among 0..{modes.shape[0] - 1}. Got {preferred!r}.")
        self.register_buffer("modes", modes.float())
        self.register_buffer("mask", torch.zeros(modes.shape[0], dtype=torch.bool).index_fill_(0, torch.tensor(preferred), True))
        self.std = float(std)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        # float64: a generator that ran off to 1e20 (reward hacking) still gets a number, not inf - inf
        logits = -torch.cdist(x.double(), self.modes.double()).pow(2) / (2 * self.std**2)  # [B, K]
        share = (torch.logsumexp(logits.masked_fill(~self.mask, -torch.inf), -1) - torch.logsumexp(logits, -1)).exp()
        return share.to(x.dtype)


def proxy_reward(x: Tensor, reward: nn.Module, *, hidden: int = 64, steps: int = 2000, seed: int = 0) -> nn.Module:
    """An MLP ``[B, 2] -> [B]`` regressed onto ``reward`` at the samples ``x`` [N, 2] only (the data),
    with a fixed seed; frozen. Off the data it is whatever the fit extrapolates to."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            target = reward(x)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(steps):
            index = torch.randint(x.shape[0], (256,))
            loss = (net(x[index]).squeeze(1) - target[index]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return _Frozen(net)


def ink_reward(x: Tensor, epochs: int = 20, seed: int = 0) -> nn.Module:
    """The logit of a small CNN trained on digits ``x`` [N, 1, 8, 8] to tell bold from thin (ink above
    or below the median mean intensity); frozen. ``reward(x) [B]`` is differentiable in the pixels."""
    from anydistill.diffusion.digit_features import train_small_cnn

    ink = x.flatten(1).mean(1)
    return _Frozen(train_small_cnn(x, (ink > ink.median()).long(), [8, 16], 32, epochs, seed), logit_margin=True)


class _Frozen(nn.Module):
    """A trained reward network, frozen and in eval mode: ``forward(x, cond) -> [B]``."""

    def __init__(self, net: nn.Module, logit_margin: bool = False):
        super().__init__()
        self.net, self.logit_margin = net.eval().requires_grad_(False), logit_margin

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        out = self.net(x)
        return out[:, 1] - out[:, 0] if self.logit_margin else out.squeeze(1)
