"""The feature discriminator (DMD2's head, generalised): its three losses equal their formulas on
fixed logits, the R1 penalty equals a hand-computed input gradient, and it reads the network through
its preconditioning without holding the network's parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anydistill.diffusion.discriminator import FeatureDiscriminator, bottleneck_path, feature_width
from anydistill.diffusion.schedules import RectifiedFlow
from anydistill.diffusion.timesteps import UniformTime
from anydistill.models.flow_denoisers import mlp_flow_denoiser


def setup(loss: str = "softplus", r1: float = 0.0):
    torch.manual_seed(0)
    network = mlp_flow_denoiser((2,), 0, hidden=16, depth=2)
    tap, schedule = bottleneck_path(network), RectifiedFlow()
    head = FeatureDiscriminator(feature_width(network, tap, schedule), tap, schedule, UniformTime(), hidden=8, loss=loss, r1=r1)
    return network, head


@pytest.mark.parametrize("loss", ["softplus", "hinge", "wgan"])
def test_losses_are_their_formulas(loss) -> None:
    network, head = setup(loss)
    fake, real = torch.randn(6, 2), torch.randn(6, 2)
    torch.manual_seed(1)
    d_fake, d_real = head.logits(network, fake, None), head.logits(network, real, None)
    torch.manual_seed(1)
    ours = head.discriminator_loss(network, fake, real, None, None)
    expected = {"softplus": F.softplus(d_fake).mean() + F.softplus(-d_real).mean(),
                "hinge": F.relu(1 + d_fake).mean() + F.relu(1 - d_real).mean(), "wgan": d_fake.mean() - d_real.mean()}[loss]
    torch.testing.assert_close(ours, expected)
    torch.manual_seed(2)
    generator = head.generator_loss(network, fake, None)
    torch.manual_seed(2)
    d = head.logits(network, fake, None)
    torch.testing.assert_close(generator, F.softplus(-d).mean() if loss == "softplus" else -d.mean())


def test_r1_is_half_gamma_times_the_squared_input_gradient() -> None:
    network, head = setup(r1=10.0)
    fake, real = torch.randn(4, 2), torch.randn(4, 2)
    torch.manual_seed(3)
    with_r1 = head.discriminator_loss(network, fake, real, None, None)
    torch.manual_seed(3)
    head.r1 = 0.0
    plain = head.discriminator_loss(network, fake, real, None, None)
    torch.manual_seed(3)
    head.logits(network, fake, None)  # the same draws: fake, then real
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(head.logits(network, x, None).sum(), x)
    torch.testing.assert_close(with_r1 - plain, 5.0 * grad.pow(2).sum(1).mean(), rtol=1e-5, atol=1e-6)


def test_only_the_head_is_its_parameters() -> None:
    network, head = setup()
    assert {name.split(".")[0] for name, _ in head.named_parameters()} == {"head"}
    assert sum(p.numel() for p in head.parameters()) < sum(p.numel() for p in network.parameters())
