"""Denoisers that know how they are read: a network plus the names of its noise schedule, its
prediction kind and its preconditioning, so that a recipe's ``teacher:`` / ``student:`` section
fully describes a diffusion model and an exported ``model.json`` rebuilds it.

The builders take the data's ``input_shape`` and ``num_classes`` (injected by the engine). The
names are plain strings here (the zoo knows nothing of training); the diffusion family turns them
into a `NoiseSchedule` (``anydistill.diffusion.common.schedule_of``).
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from anydistill.models.denoisers import conv_denoiser, mlp_denoiser

ScheduleName = Literal["rectified-flow", "vp-cosine", "edm", "trigflow"]
PredictionName = Literal["x0", "eps", "v", "velocity"]
PreconditioningName = Literal["none", "edm", "consistency"]


class Denoiser(nn.Module):
    """``forward(x_t [B, ...], t_in [B], cond [B] | None) -> [B, ...]``: the wrapped ``net``, whose
    output is a ``prediction`` on the ``schedule`` (with ``preconditioning``). Parameters live under
    ``net.`` in the state dict.

    ``sampling`` is set by the method that trained the model (how its samples are drawn: sampler,
    step counts, guidance); ``None`` means a plain denoiser, sampled with an ODE solver.
    """

    def __init__(self, net: nn.Module, schedule: str, prediction: str, preconditioning: str):
        super().__init__()
        problems = []
        if preconditioning != "none" and schedule != "edm":
            problems.append(f"preconditioning {preconditioning!r} needs schedule 'edm'. Got schedule {schedule!r}.")
        if preconditioning != "none" and prediction != "x0":
            problems.append(f"preconditioning {preconditioning!r} makes the model an x0 predictor: set prediction 'x0'. Got {prediction!r}.")
        if problems:
            raise ValueError(" ".join(problems))
        self.net = net
        self.schedule, self.prediction, self.preconditioning = schedule, prediction, preconditioning
        self.sampling: dict | None = None

    @property
    def null_class(self) -> int | None:
        """The label meaning "unconditional" (classifier-free guidance), or ``None``."""
        return getattr(self.net, "null_class", None)

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(x_t, t_in, cond)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule}, prediction={self.prediction}, preconditioning={self.preconditioning}"


def mlp_flow_denoiser(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    schedule: ScheduleName = "rectified-flow",
    prediction: PredictionName = "velocity",
    preconditioning: PreconditioningName = "none",
    conditional: bool = True,
    hidden: int = 256,
    depth: int = 4,
    time_embedding: int = 64,
) -> Denoiser:
    """A residual-MLP `Denoiser` for flat points (the 2-D toys), conditional on the data's classes
    when it has any and ``conditional`` is true (with a null class for guidance)."""
    classes = num_classes if conditional else 0
    net = mlp_denoiser(math.prod(input_shape), hidden=hidden, depth=depth, num_classes=classes, time_embedding=time_embedding)
    return Denoiser(net, schedule, prediction, preconditioning)


def conv_flow_denoiser(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    schedule: ScheduleName = "rectified-flow",
    prediction: PredictionName = "velocity",
    preconditioning: PreconditioningName = "none",
    conditional: bool = True,
    width: int = 32,
    time_embedding: int = 64,
) -> Denoiser:
    """A small two-resolution conv UNet `Denoiser` (`anydistill.models.denoisers.ConvDenoiser`) for
    ``[C, H, H]`` images (8x8 digits), class-conditional with a null class when ``conditional``."""
    channels, size = input_shape[0], input_shape[-1]
    net = conv_denoiser(channels, size, width=width, num_classes=num_classes if conditional else 0, time_embedding=time_embedding)
    return Denoiser(net, schedule, prediction, preconditioning)


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` behind the zoo's denoiser signature ``(x_t, t_in, cond)``.

    ``t_in`` (the schedule's time, e.g. in [0, 1]) is multiplied by ``time_scale`` before the UNet's
    sinusoidal embedding, which is built for DDPM's 0..1000 steps; label ``num_classes`` is the null
    class of classifier-free guidance (``cond=None`` means it for every example).
    """

    def __init__(self, unet: nn.Module, num_classes: int, time_scale: float):
        super().__init__()
        self.unet, self.num_classes, self.time_scale = unet, num_classes, time_scale

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.num_classes > 0 else None

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None = None) -> Tensor:
        import torch

        if t_in.ndim == 0:
            t_in = t_in.expand(x_t.shape[0])
        labels = None
        if self.num_classes > 0:
            labels = cond if cond is not None else torch.full((x_t.shape[0],), self.num_classes, dtype=torch.long, device=x_t.device)
        return self.unet(x_t, t_in * self.time_scale, class_labels=labels).sample


def diffusers_unet_denoiser(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    schedule: ScheduleName = "rectified-flow",
    prediction: PredictionName = "velocity",
    conditional: bool = True,
    block_out_channels: list[int] = [16, 32],  # noqa: B006
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    time_scale: float = 1000.0,
) -> Denoiser:
    """A `Denoiser` around a freshly initialised diffusers ``UNet2DModel`` (no weights are downloaded):
    the "real model" path, the same code that drives a pretrained UNet."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ImportError("diffusers-unet needs the diffusers package: pip install diffusers (it does not need torchvision).") from None
    classes = num_classes if conditional else 0
    unet = UNet2DModel(
        sample_size=input_shape[-1], in_channels=input_shape[0], out_channels=input_shape[0],
        block_out_channels=tuple(block_out_channels), down_block_types=("DownBlock2D",) * len(block_out_channels),
        up_block_types=("UpBlock2D",) * len(block_out_channels), layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups, num_class_embeds=classes + 1 if classes else None,
    )
    return Denoiser(DiffusersUNet(unet, classes, time_scale), schedule, prediction, "none")
