"""Rewards for reward-tuned distillation: the true mode preference is its formula and differentiable,
the proxy agrees on the data and can be raised off it while the true reward falls, and the ink reward
ranks bold digits above thin ones."""

from __future__ import annotations

import torch

from anydistill.data.toy2d_distributions import eight_gaussians, modes
from anydistill.diffusion.rewards import ModePreference, ink_reward, proxy_reward


def test_mode_preference_is_the_share_on_the_preferred_modes() -> None:
    reward = ModePreference(modes("eight_gaussians"), 0.5, preferred=[0, 1])
    centres = modes("eight_gaussians")
    values = reward(centres)
    assert values[:2].gt(0.95).all() and values[2:].lt(0.05).all()  # at a preferred mode ~1, elsewhere ~0
    between = (centres[0] + centres[1]) / 2  # equidistant from two preferred modes, farther from the rest
    assert reward(between[None]).item() > 0.9
    x = torch.randn(4, 2, requires_grad=True)
    reward(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    far = torch.tensor([[1e20, 1e20], [-1e20, 0.0]])  # a generator that ran off (reward hacking) still gets a share
    assert torch.isfinite(reward(far)).all()


def test_the_proxy_fits_the_data_and_can_be_exploited_off_it() -> None:
    truth = ModePreference(modes("eight_gaussians"), 0.5, preferred=[0, 1])
    data = eight_gaussians(4000, torch.Generator().manual_seed(0))
    proxy = proxy_reward(data, truth, steps=1500)
    on_data = eight_gaussians(1000, torch.Generator().manual_seed(1))
    assert (proxy(on_data) - truth(on_data)).abs().mean() < 0.05
    x = on_data[:64].clone().requires_grad_(True)  # ascend the proxy from data points
    optimizer = torch.optim.Adam([x], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        (-proxy(x).mean()).backward()
        optimizer.step()
    assert proxy(x).mean() > 2.0  # the proxy climbs past anything the true reward can give (<= 1) ...
    assert truth(x).mean() < proxy(x).mean() - 1.0  # ... which the true reward does not follow: reward hacking


def test_ink_reward_prefers_bold_digits() -> None:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    reward = ink_reward(x[:1200], epochs=10)
    ink = x[1200:].flatten(1).mean(1)
    scores = reward(x[1200:])
    bold, thin = scores[ink > ink.quantile(0.8)], scores[ink < ink.quantile(0.2)]
    assert bold.mean() > thin.mean() + 1.0
