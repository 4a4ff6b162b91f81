r"""Small denoiser networks for the toy diffusion benchmarks (2-D point clouds, 8x8 digits).

Every network has the signature ``forward(x_t, t_in, cond) -> Tensor`` with the output shaped like
``x_t``: ``x_t`` is ``[B, dim]`` (`MLPDenoiser`) or ``[B, C, H, W]`` (`ConvDenoiser`), ``t_in`` is
``[B]`` (or 0-dim, shared by the batch) and ``cond`` is ``LongTensor [B]`` of class labels or
``None``. What the output *means* (x0, eps, v, velocity, EDM's ``F``) is decided by how the net is
trained and wrapped (`anydistill.diffusion.teacher`), not here.

**The time input is taken as given.** The network does not know the schedule: the wrapper feeds
it the schedule's ``t`` (``[0, 1]`` for `VPCosine` / `RectifiedFlow`, ``[0, pi/2]`` for
`TrigFlow`) or, with EDM preconditioning, ``c_noise = ln(sigma) / 4`` (about ``[-1.55, 1.10]`` for
``sigma`` in ``[0.002, 80]``). `SinusoidalTimeEmbedding` maps a scalar ``s`` to
``[sin(w_k s), cos(w_k s)]`` with angular frequencies ``w_k`` spaced geometrically from 1 to
``max_frequency`` (1000): the lowest pair makes the embedding injective on any interval shorter
than ``pi`` (all the ranges above), and the highest resolves differences of about ``1e-3`` (DDPM's
1000 discrete steps on ``[0, 1]``). Inputs spread over a much longer range, such as a raw EDM
``sigma`` in ``[0.002, 80]`` or DDPM's integer steps, should be rescaled first (that is what
``c_noise`` is for).

**Class conditioning and the null class.** A network built with ``num_classes = K > 0`` embeds
``K + 1`` labels: ``0 .. K-1`` and the *null* label ``K`` (its ``null_class``), the "no
condition" of classifier-free guidance (Ho & Salimans 2022), learned by dropping labels to ``K``
during training. ``cond=None`` means the null class for every example; ``null_class`` lets a
wrapper batch conditional and unconditional inputs into one forward. With ``num_classes = 0`` the
net is unconditional, ``null_class`` is ``None`` and ``cond`` must be ``None``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.core.checks import is_int, raise_problems

__all__ = [
    "ConvDenoiser",
    "MLPDenoiser",
    "SinusoidalTimeEmbedding",
    "conv_denoiser",
    "mlp_denoiser",
]


class SinusoidalTimeEmbedding(nn.Module):
    r"""Fourier features of a scalar time input: ``[B] -> [B, dim]``,
    ``[sin(w_0 s), ..., sin(w_{h-1} s), cos(w_0 s), ..., cos(w_{h-1} s)]`` with ``h = dim / 2`` and
    :math:`w_k = \text{max\_frequency}^{k / (h - 1)}` (so ``w_0 = 1``; see the module docstring for
    the ranges of ``s`` this suits). The frequencies are a buffer, not parameters.

    Args:
        dim: output width, even and >= 2.
        max_frequency: the highest angular frequency.
    """

    def __init__(self, dim: int, max_frequency: float = 1000.0):
        super().__init__()
        half = dim // 2
        exponents = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        self.register_buffer("frequencies", (max_frequency**exponents).float(), persistent=False)

    def forward(self, s: Tensor) -> Tensor:
        angles = s.to(self.frequencies.dtype)[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Conditioning(nn.Module):
    """Time embedding plus (optionally) label embedding: ``(t_in [B], cond [B] | None) -> [B, width]``."""

    def __init__(self, width: int, num_classes: int, time_embedding: int):
        super().__init__()
        self.num_classes = num_classes
        self.time = nn.Sequential(
            SinusoidalTimeEmbedding(time_embedding),
            nn.Linear(time_embedding, width),
            nn.SiLU(),
            nn.Linear(width, width),
        )
        # Row num_classes is the learned null ("unconditional") embedding.
        self.label = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.num_classes > 0 else None

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None, owner: str) -> Tensor:
        batch = x_t.shape[0]
        if t_in.ndim == 0:
            t_in = t_in.expand(batch)
        if t_in.shape != (batch,):
            raise ValueError(
                f"{owner}: the time input must have shape [B] = [{batch}] or be 0-dim. "
                f"Got shape {tuple(t_in.shape)}."
            )
        emb = self.time(t_in.to(x_t.dtype)).to(x_t.dtype)
        if self.label is None:
            if cond is not None:
                raise ValueError(
                    f"{owner} was built with num_classes=0 (unconditional), so 'cond' must be None. "
                    "Build it with num_classes > 0 to condition on labels."
                )
            return emb
        if cond is None:
            cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=x_t.device)
        elif cond.shape != (batch,) or cond.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"{owner}: 'cond' must be an integer tensor of labels of shape [B] = [{batch}], "
                "or None. "
                f"Got {cond.dtype} of shape {tuple(cond.shape)}."
            )
        return emb + self.label(cond.long()).to(x_t.dtype)


# ----------------------------------------------------------------------------------------------
# 2-D (and any flat) data


class _ResidualBlock(nn.Module):
    """``h + W2 SiLU(W1 SiLU(h) + E c)``: a pre-activation residual MLP block with additive
    conditioning (the per-block projection ``E`` of the shared time/label embedding ``c``)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear1 = nn.Linear(width, width)
        self.embedding = nn.Linear(width, width)
        self.linear2 = nn.Linear(width, width)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        z = self.linear1(F.silu(h)) + self.embedding(c)
        return h + self.linear2(F.silu(z))


class MLPDenoiser(nn.Module):
    """``[B, dim]`` → ``[B, dim]``: input projection, ``depth`` residual SiLU blocks each
    conditioned on the time (and label) embedding, output projection. Built by `mlp_denoiser`.

    ``forward(x_t [B, dim], t_in [B], cond LongTensor [B] | None) -> [B, dim]``; see the module
    docstring for the time input and the null class.
    """

    def __init__(self, dim: int, hidden: int, depth: int, num_classes: int, time_embedding: int):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.conditioning = _Conditioning(hidden, num_classes, time_embedding)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden) for _ in range(depth))
        self.output = nn.Linear(hidden, dim)

    @property
    def null_class(self) -> int | None:
        """The label that means "unconditional" (``num_classes``), or ``None`` if unconditional."""
        return self.conditioning.null_class

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None = None) -> Tensor:
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(
                f"MLPDenoiser expects x_t of shape [B, {self.dim}]. Got {tuple(x_t.shape)}."
            )
        c = self.conditioning(x_t, t_in, cond, "MLPDenoiser")
        h = self.input(x_t)
        for block in self.blocks:
            h = block(h, c)
        return self.output(F.silu(h))


def mlp_denoiser(
    dim: int = 2,
    *,
    hidden: int = 256,
    depth: int = 4,
    num_classes: int = 0,
    time_embedding: int = 64,
) -> MLPDenoiser:
    """An `MLPDenoiser` for ``dim``-dimensional points (the 2-D toys by default).

    Args:
        dim: data dimension.
        hidden: width of the residual stream and of the time/label embedding.
        depth: number of residual blocks (three ``hidden x hidden`` linears each).
        num_classes: number of labels; 0 for an unconditional net. A conditional net also has
            the null label ``num_classes`` for classifier-free guidance.
        time_embedding: width of the sinusoidal time features (even).

    With the defaults (2-D, 256 wide, 4 blocks, unconditional) it has about 0.87M parameters.
    """
    raise_problems(
        _int_problems(
            "mlp_denoiser",
            dict(dim=(dim, 1), hidden=(hidden, 1), depth=(depth, 1), num_classes=(num_classes, 0)),
        )
        + _even_problem("mlp_denoiser", "time_embedding", time_embedding)
    )
    return MLPDenoiser(dim, hidden, depth, num_classes, time_embedding)


# ----------------------------------------------------------------------------------------------
# images


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ConvBlock(nn.Module):
    """ADM-style residual block: ``skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))) + E c)))``, the
    embedding ``c`` added per channel after the first conv."""

    def __init__(self, in_channels: int, out_channels: int, embedding: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding = nn.Linear(embedding, out_channels)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding(F.silu(c))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConvDenoiser(nn.Module):
    """A two-resolution UNet for small images, ``[B, C, H, W] -> [B, C, H, W]`` (``H``, ``W`` even).

    ``H x W`` at ``width`` channels (one block, kept as the skip), a stride-2 conv to
    ``H/2 x W/2`` at ``2 width`` (two blocks), nearest upsampling and a conv back to ``width``,
    concatenation with the skip, one block, then GroupNorm-SiLU-conv to ``C``. The time (and label)
    embedding, ``4 width`` wide, is added in every block. Built by `conv_denoiser`.

    ``forward(x_t [B, C, H, W], t_in [B], cond LongTensor [B] | None) -> [B, C, H, W]``; see the
    module docstring for the time input and the null class.
    """

    def __init__(self, channels: int, size: int, width: int, num_classes: int, time_embedding: int):
        super().__init__()
        self.channels, self.size, self.num_classes = channels, size, num_classes
        embedding = 4 * width
        self.conditioning = _Conditioning(embedding, num_classes, time_embedding)
        self.input = nn.Conv2d(channels, width, 3, padding=1)
        self.down_block = _ConvBlock(width, width, embedding)
        self.downsample = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid_blocks = nn.ModuleList(
            [_ConvBlock(2 * width, 2 * width, embedding), _ConvBlock(2 * width, 2 * width, embedding)]
        )
        self.upsample = nn.Conv2d(2 * width, width, 3, padding=1)
        self.up_block = _ConvBlock(2 * width, width, embedding)
        self.output_norm = _group_norm(width)
        self.output = nn.Conv2d(width, channels, 3, padding=1)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` the net was built for (it runs on any even ``H``, ``W``)."""
        return (self.channels, self.size, self.size)

    @property
    def null_class(self) -> int | None:
        """The label that means "unconditional" (``num_classes``), or ``None`` if unconditional."""
        return self.conditioning.null_class

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None = None) -> Tensor:
        if x_t.ndim != 4 or x_t.shape[1] != self.channels or x_t.shape[2] % 2 or x_t.shape[3] % 2:
            raise ValueError(
                f"ConvDenoiser expects x_t of shape [B, {self.channels}, H, W] with H and W even. "
                f"Got {tuple(x_t.shape)}."
            )
        c = self.conditioning(x_t, t_in, cond, "ConvDenoiser")
        skip = self.down_block(self.input(x_t), c)
        h = self.downsample(skip)
        for block in self.mid_blocks:
            h = block(h, c)
        h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up_block(torch.cat([h, skip], dim=1), c)
        return self.output(F.silu(self.output_norm(h)))


def conv_denoiser(
    channels: int = 1,
    size: int = 8,
    *,
    width: int = 32,
    num_classes: int = 10,
    time_embedding: int = 64,
) -> ConvDenoiser:
    """A class-conditional `ConvDenoiser` for ``size x size`` images (8x8 digits by default).

    Args:
        channels: image channels.
        size: image side (even: the net works at ``size`` and ``size / 2``).
        width: channels at full resolution (``2 width`` at half resolution).
        num_classes: number of labels (10 digits); 0 for an unconditional net. A conditional net
            also has the null label ``num_classes`` for classifier-free guidance.
        time_embedding: width of the sinusoidal time features (even).

    With the defaults it has about 0.3M parameters.
    """
    problems = _int_problems(
        "conv_denoiser",
        dict(channels=(channels, 1), size=(size, 2), width=(width, 1), num_classes=(num_classes, 0)),
    )
    if is_int(size) and size % 2:
        problems.append(
            f"The 'size' parameter of conv_denoiser must be even (two resolutions). Got {size!r}."
        )
    raise_problems(problems + _even_problem("conv_denoiser", "time_embedding", time_embedding))
    return ConvDenoiser(channels, size, width, num_classes, time_embedding)


# ----------------------------------------------------------------------------------------------
# validation helpers


def _int_problems(func: str, values: dict[str, tuple[object, int]]) -> list[str]:
    return [
        f"The '{name}' parameter of {func} must be an int >= {low}. Got {value!r}."
        for name, (value, low) in values.items()
        if not (is_int(value) and value >= low)
    ]


def _even_problem(func: str, name: str, value: object) -> list[str]:
    if is_int(value) and value >= 2 and value % 2 == 0:
        return []
    return [f"The '{name}' parameter of {func} must be an even int >= 2. Got {value!r}."]


