r"""DC's own training-time augmentation for MNIST (Zhao et al., ICLR 2021, ``utils.py::augment``).

Dataset Condensation evaluates MNIST sets with a non-differentiable augmentation instead of DSA:
``get_daparam`` returns ``crop 4, scale 0.2, rotate 45, noise 0.001, strategy 'crop_scale_rotate'``
for MNIST, and with it the evaluation trains ``E = 1000`` epochs. The published random-subset
baselines (64.9 +- 3.5 at IPC 1, 95.1 +- 0.9 at IPC 10) were measured this way, so evaluator parity
needs it.

Per image, ONE of the strategy's operations is chosen uniformly at random (the official
``np.random.permutation(augs)[0]``; ``noise`` is not in the strategy, so it is never applied):

* ``crop``: pad by ``crop`` pixels with the batch's per-channel mean, then cut at a random offset
  in ``0 .. 2 crop - 1``: an integer shift in ``[-crop, crop - 1]`` per axis.
* ``scale``: resize (nearest) to ``int(u_h H) x int(u_w W)`` with ``u ~ U[1 - scale, 1 + scale]``,
  independently per axis, then centre it on a zero canvas and cut the centre ``H x W``.
* ``rotate``: rotate by an integer angle in ``[-rotate, rotate - 1]`` degrees around the centre;
  the corners are filled with the mean of the channel means. (Official: ``scipy.ndimage.rotate``,
  cubic spline; here bilinear ``grid_sample``, a stated difference of interpolation only.)

Vectorised over the batch with affine grids; the official loops over images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dc_augment"]

_OPS = ("crop", "scale", "rotate")


def dc_augment(
    x: Tensor, generator: torch.Generator | None = None, *, crop: int = 4, scale: float = 0.2, rotate: int = 45
) -> Tensor:
    """Augment ``x [B, C, H, W]`` with DC's MNIST setting; returns a new ``[B, C, H, W]`` tensor.

    ``generator`` (on any device) drives every draw; ``None`` uses torch's global RNG.
    """
    if x.dim() != 4:
        raise ValueError(f"dc_augment needs images [B, C, H, W]. Got shape {tuple(x.shape)}.")
    b, c, h, w = x.shape
    channel_mean = x.mean(dim=(0, 2, 3)).view(1, c, 1, 1)

    where = generator.device if generator is not None else torch.device("cpu")

    def uniform(n: int) -> Tensor:
        return torch.rand(n, generator=generator, device=where).to(x.device, x.dtype)

    def integers(low: int, high: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(low, high, shape, generator=generator, device=where).to(x.device)

    op = integers(0, len(_OPS), (b,))
    out = x.clone()

    chosen = (op == 0).nonzero().flatten()
    if len(chosen):
        shift = integers(0, 2 * crop, (len(chosen), 2)) - crop
        out[chosen] = _shift(x[chosen], shift, channel_mean)

    chosen = (op == 1).nonzero().flatten()
    if len(chosen):
        factors = 1 - scale + 2 * scale * uniform(2 * len(chosen)).view(-1, 2)
        sizes = torch.stack([(factors[:, 0] * h).floor(), (factors[:, 1] * w).floor()], dim=1)
        out[chosen] = _rescale(x[chosen], sizes)

    chosen = (op == 2).nonzero().flatten()
    if len(chosen):
        angle = integers(-rotate, rotate, (len(chosen),)).to(x.dtype)
        out[chosen] = _rotate(x[chosen], angle * math.pi / 180, channel_mean.mean())
    return out


def _affine(x: Tensor, theta: Tensor, *, mode: str, fill: Tensor | float) -> Tensor:
    """Resample ``x`` on the grid of ``theta [B, 2, 3]`` (normalised coordinates), ``fill`` outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Zero padding of x - fill is padding of x with fill (bilinear borders blend into it too).
    return F.grid_sample(x - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill


def _shift(x: Tensor, shift: Tensor, fill: Tensor) -> Tensor:
    """Content moved by ``-shift`` pixels (the crop's offset), mean-filled."""
    h, w = x.shape[-2:]
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = 2 * shift[:, 1].to(x.dtype) / w  # the output pixel j reads input j + dc
    theta[:, 1, 2] = 2 * shift[:, 0].to(x.dtype) / h
    return _affine(x, theta, mode="nearest", fill=fill)


def _rescale(x: Tensor, sizes: Tensor) -> Tensor:
    """Nearest resize to ``sizes [B, 2]`` (rows, cols) centred on a zero canvas of the input size."""
    h, w = x.shape[-2:]
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = w / sizes[:, 1]  # an output of width s shows the input squeezed by s / w
    theta[:, 1, 1] = h / sizes[:, 0]
    return _affine(x, theta, mode="nearest", fill=0.0)


def _rotate(x: Tensor, angle: Tensor, fill: Tensor) -> Tensor:
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    return _affine(x, theta, mode="bilinear", fill=fill)
