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

from anydistill.zoo.denoisers import conv_denoiser, mlp_denoiser

ScheduleName = Literal["rectified-flow", "vp-cosine", "edm", "trigflow"]
PredictionName = Literal["x0", "eps", "v", "velocity"]
PreconditioningName = Literal["none", "edm"]


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
        if preconditioning == "edm" and schedule != "edm":
            problems.append(f"preconditioning 'edm' needs schedule 'edm'. Got schedule {schedule!r}.")
        if preconditioning == "edm" and prediction != "x0":
            problems.append(f"preconditioning 'edm' makes the model an x0 predictor: set prediction 'x0'. Got {prediction!r}.")
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
    """A small two-resolution conv UNet `Denoiser` (`anydistill.zoo.denoisers.ConvDenoiser`) for
    ``[C, H, H]`` images (8x8 digits), class-conditional with a null class when ``conditional``."""
    channels, size = input_shape[0], input_shape[-1]
    net = conv_denoiser(channels, size, width=width, num_classes=num_classes if conditional else 0, time_embedding=time_embedding)
    return Denoiser(net, schedule, prediction, preconditioning)
