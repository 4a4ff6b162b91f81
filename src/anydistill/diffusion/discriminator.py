r"""A GAN discriminator that reads a denoiser's features (DMD2's head, generalised).

DMD2 (Yin et al. 2024b, tianweiy/DMD2 ``main/edm/edm_guidance.py``) puts a small classification head
on the fake score network's bottleneck: a sample ``x`` is noised at a random level, run through the
network (with its preconditioning), and the head maps the tapped features to one logit. The network
is passed in on every call, never held: it belongs to the method (its fake score), which trains it
with the head, so its parameters stay in one place of the state dict.

Losses on logits ``d`` (``fake``: generated samples, ``real``: data):

=============  ======================================  ===========================
``loss``       discriminator                            generator
=============  ======================================  ===========================
``softplus``   ``softplus(d_fake) + softplus(-d_real)``  ``softplus(-d_fake)`` (non-saturating; DMD2's)
``hinge``      ``relu(1 + d_fake) + relu(1 - d_real)``   ``-d_fake``
``wgan``       ``d_fake - d_real``                        ``-d_fake``
=============  ======================================  ===========================

each a mean over the batch. ``r1`` adds the R1 penalty (Mescheder et al. 2018) on real samples,
:math:`\frac{\gamma}{2}\,\mathbb{E}\,\lVert\nabla_x d(x_\text{real})\rVert^2`, the gradient taken with
respect to the clean input (through the noising).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.core.taps import capture_features
from anydistill.diffusion.schedules import NoiseSchedule
from anydistill.diffusion.teacher import network_output
from anydistill.diffusion.timesteps import TimeSampler

GAN_LOSSES = ("softplus", "hinge", "wgan")


def bottleneck_path(model: nn.Module) -> str:
    """The module path of a zoo denoiser's bottleneck: the middle MLP block or the last mid conv block."""
    net = model.net
    if hasattr(net, "unet"):  # diffusers UNet2DModel
        return "net.unet.mid_block"
    if hasattr(net, "mid_blocks"):
        return f"net.mid_blocks.{len(net.mid_blocks) - 1}"
    if hasattr(net, "blocks"):
        return f"net.blocks.{len(net.blocks) // 2}"
    raise TypeError(f"the GAN head reads a zoo denoiser's bottleneck; {type(net).__name__} has none known.")


class FeatureDiscriminator(nn.Module):
    """The head (its only parameters) and how it reads a denoiser.

    Args:
        width: the tapped feature's size per sample (`feature_width`).
        tap: the module path whose output the head reads (`bottleneck_path`).
        schedule: the noise schedule the samples are noised on.
        times: the noise levels drawn per sample (DMD2: uniform over the grid).
        hidden: the head's hidden width.
        loss: ``softplus``, ``hinge`` or ``wgan``.
        r1: the R1 weight gamma (0: off).
    """

    def __init__(self, width: int, tap: str, schedule: NoiseSchedule, times: TimeSampler, *, hidden: int = 256,
                 loss: str = "softplus", r1: float = 0.0):
        super().__init__()
        if loss not in GAN_LOSSES:
            raise ValueError(f"The 'loss' parameter of FeatureDiscriminator must be one of {', '.join(GAN_LOSSES)}. Got {loss!r}.")
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.tap, self.schedule, self.times, self.loss, self.r1 = tap, schedule, times, loss, r1

    def logits(self, network: nn.Module, x: Tensor, cond: Tensor | None) -> Tensor:
        """``[B]`` logits of samples ``x`` [B, ...] noised at a random level, read through ``network``."""
        t = self.times.sample(x.shape[0], self.schedule, generator=None, device=x.device)
        x_t = self.schedule.add_noise(x, self.schedule.sample_noise(x, None), t)
        with capture_features(network, [self.tap]) as features:  # through the preconditioning, as the network is trained
            network_output(network, self.schedule, x_t, t, cond, network.preconditioning)
        return self.head(features[self.tap]).squeeze(1)

    def generator_loss(self, network: nn.Module, fake: Tensor, cond: Tensor | None) -> Tensor:
        """The generator's term on its samples ``fake`` (gradients reach them)."""
        d = self.logits(network, fake, cond)
        return F.softplus(-d).mean() if self.loss == "softplus" else -d.mean()

    def discriminator_loss(self, network: nn.Module, fake: Tensor, real: Tensor, fake_cond: Tensor | None,
                           real_cond: Tensor | None) -> Tensor:
        """The discriminator's term on detached generated samples and real ones (plus R1 when set)."""
        real = real.detach().requires_grad_(self.r1 > 0)
        d_fake, d_real = self.logits(network, fake.detach(), fake_cond), self.logits(network, real, real_cond)
        if self.loss == "softplus":
            loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        elif self.loss == "hinge":
            loss = F.relu(1 + d_fake).mean() + F.relu(1 - d_real).mean()
        else:
            loss = d_fake.mean() - d_real.mean()
        if self.r1 > 0:
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            loss = loss + 0.5 * self.r1 * grad.pow(2).flatten(1).sum(1).mean()
        return loss


def sample_shape(network: nn.Module) -> tuple[int, ...]:
    """The shape of one sample a zoo denoiser takes (points, images, a diffusers UNet's)."""
    net = network.net
    if hasattr(net, "dim"):
        return (net.dim,)
    if hasattr(net, "unet"):
        config = net.unet.config
        return (config.in_channels, config.sample_size, config.sample_size)
    return tuple(net.input_shape)


@torch.no_grad()
def feature_width(network: nn.Module, tap: str, schedule: NoiseSchedule) -> int:
    """The size per sample of ``network``'s output at ``tap`` (a dry run on zeros at mid-range)."""
    t = torch.full((2,), 0.5 * (schedule.t_min + schedule.t_max))
    with capture_features(network, [tap]) as features:
        network_output(network, schedule, torch.zeros(2, *sample_shape(network)), t, None, network.preconditioning)
    return features[tap][0].numel()
