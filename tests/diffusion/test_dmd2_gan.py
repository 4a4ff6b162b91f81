"""DMD2's GAN term: a size-independent weight (`gan_scale: per-dimension`), and the discriminator
reading the fake score through its preconditioning (EDM: the network sees c_in x_t and c_noise)."""

from __future__ import annotations

import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.diffusion.methods.dmd2 import DMD2, gan_weight
from anydistill.diffusion.schedules import EDM
from anydistill.models.flow_denoisers import mlp_flow_denoiser


@pytest.mark.parametrize("size", [2, 64, 12288])
def test_per_dimension_weight_gives_the_same_balance_at_every_size(size) -> None:
    """d(loss)/d(one sample's GAN loss) / d(loss)/d(one element's DM loss) is the weight at every size per
    dimension, and weight x size per sample (the official reduction)."""
    for scale, expected in (("per-dimension", 0.5), ("per-sample", 0.5 * size)):
        dm, gan = torch.zeros(4, size, requires_grad=True), torch.zeros(4, requires_grad=True)
        (dm.mean() + gan_weight(0.5, scale, size) * gan.mean()).backward()
        assert (gan.grad[0] / dm.grad[0, 0]).item() == pytest.approx(expected, rel=1e-6)


def test_the_discriminator_sees_the_preconditioned_input() -> None:
    torch.manual_seed(0)
    build = lambda: mlp_flow_denoiser((2,), 0, schedule="edm", prediction="x0", preconditioning="edm", hidden=16, depth=2)  # noqa: E731
    method = DMD2(build(), Teacher(build()))
    method.setup("fit")
    seen = []
    method.fake.net.register_forward_pre_hook(lambda module, args: seen.append((args[0].clone(), args[1].clone())))
    torch.manual_seed(1)
    x = torch.randn(8, 2)
    method.discriminate(x, None)
    (x_in, t_in), schedule = seen[-1], EDM()
    torch.manual_seed(1)  # the same draws: the data, the time, then the noise
    from anydistill.diffusion.timesteps import UniformTime

    torch.randn(8, 2)
    t = UniformTime().sample(8, schedule, generator=None, device=x.device)
    x_t = schedule.add_noise(x, schedule.sample_noise(x, None), t)
    torch.testing.assert_close(x_in, schedule.c_in(t)[:, None] * x_t)
    torch.testing.assert_close(t_in, schedule.c_noise(t))
