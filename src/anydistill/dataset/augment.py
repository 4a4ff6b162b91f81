r"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021).

DSA augments the real and the synthetic batch with the *same* randomly drawn transformation before
they are compared (gradient matching, distribution matching), and every transformation is
differentiable with respect to the image, so the matching loss can be back-propagated through it to
the synthetic pixels. `SiameseAugment` splits the official ``DiffAugment`` into two steps: `sample`
draws the transformation parameters (`AugmentParams`), `apply` applies given parameters to a batch.

Strategy and transforms (official ``ParamDiffAug`` defaults)
-----------------------------------------------------------
The strategy is the official string of ``_``-separated groups, e.g.
``'color_crop_cutout_flip_scale_rotate'`` (``''`` or ``'none'``: no augmentation). Per image
``x [C, H, W]`` and for ``u ~ U[0, 1)``:

==========  =================================================================================
group       transform(s), with the parameter drawn
==========  =================================================================================
color       brightness ``x + b``, ``b = (u - 0.5) * 1.0``; then saturation
            ``(x - mean_c x) * s + mean_c x``, ``s = 2.0 u`` (mean over channels); then contrast
            ``(x - mean x) * k + mean x``, ``k = u + 0.5`` (mean over ``C, H, W``)
crop        translation by an integer ``(dr, dc)`` pixels, ``dr ~ U{-r, ..., r}``,
            ``r = int(0.125 H + 0.5)`` (same for columns); pixels shifted in are 0
cutout      a ``int(0.5 H + 0.5) x int(0.5 W + 0.5)`` box set to 0, its centre row
            ``~ U{0, ..., H - (size_h mod 2)}`` (same for columns); the box is clipped to the image
flip        horizontal flip (``torch.flip(x, [-1])``) with probability 0.5
scale       sampling grid ``(x, y) -> (sx x, sy y)``, ``sx, sy ~ U[1/1.2, 1.2]`` independently
            (``> 1`` shrinks the content)
rotate      sampling grid rotated by ``theta ~ U[-15, 15]`` degrees
==========  =================================================================================

Scale and rotate resample with ``F.affine_grid`` + ``F.grid_sample`` (bilinear, zero padding);
crop uses the same with nearest sampling, which for integer shifts copies pixels exactly as the
official pad-and-index code does; cutout multiplies by a constant 0/1 mask. All are differentiable
with respect to ``x``; the parameters themselves are constants.

``mode='single'`` (official ``aug_mode='S'``, the default of every official script) picks ONE
group of the strategy uniformly at random per `sample` call and applies all its transforms (so
'color' applies brightness, saturation and contrast); ``mode='multiple'`` (``'M'``) applies every
group in the order written.

Which draws are shared: the official convention, and ours
---------------------------------------------------------
The official ``DiffAugment(x, strategy, seed, param)`` (VICO-UoE/DatasetCondensation ``utils.py``;
the same in mtt-distillation, where the flag is called ``param.batchmode`` instead of
``param.Siamese``) behaves in one of two ways:

* ``seed != -1`` (siamese/batch mode; DC, DSA and DM call it so for each class with one seed for
  the real and the synthetic batch): before every random draw the global torch RNG is re-seeded
  with ``seed, seed + 1, ...``, and then every image's parameter is overwritten with the first
  image's (``theta[:] = theta[0]``). So the WHOLE real batch and the WHOLE synthetic batch receive
  ONE draw per transform, and it is the same draw for both (same seed sequence). The group choice
  of single mode is drawn from the re-seeded RNG too, so it is shared as well.
* ``seed == -1`` (when training networks on the synthetic set: evaluation, MTT's unrolled student
  steps, expert training): every image gets its own independent draw; the single-mode group is
  still one choice for the whole batch.

Here ``sample(batch_size, generator, image_size=...)`` returns parameters with a leading dimension
of ``batch_size``, and `apply` broadcasts a leading dimension of 1 over any batch:

* ``sample(1, g, ...)`` is the siamese/batch mode: one draw per transform, applied to every image
  of any batch. Apply it to the real batch and to the synthetic batch (their sizes may differ, e.g.
  256 real against 10 synthetic images).
* ``sample(n, g, ...)`` gives ``n`` independent per-image draws (``seed == -1``); calling the
  object, ``aug(x, g)``, does this for ``x``.

The real and synthetic batches get identical transformations because the SAME `AugmentParams`
object is applied to both: `apply` draws nothing and is deterministic, so identical parameters and
identical inputs give identical outputs. No seed is replayed and torch's global RNG is never
touched; draws come from ``generator`` (or the global RNG when it is ``None``), so the same
generator state gives the same parameters. The draws are equal in distribution to the official
ones, not bit-for-bit equal to its seed sequence.

One further official difference is exposed as an option: DatasetCondensation's current ``utils.py``
calls ``affine_grid``/``grid_sample`` with PyTorch's default ``align_corners=False``, while
mtt-distillation (and the repositories forked from it) pass ``align_corners=True`` for scale and
rotate. ``SiameseAugment(align_corners=...)`` selects which; the default is ``False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.core.checks import as_image_size, is_finite_number, is_int

#: The official strategy groups and the transforms each applies, in order.
GROUPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


@dataclass(frozen=True)
class AugmentParams:
    """One draw of DSA parameters for ``n`` images (``n = 1``: one draw shared by a whole batch).

    Only the transforms named in ``ops`` are applied, in that order; their fields must be set
    (the others are ``None``). Every tensor's leading dimension is ``n``.

    Attributes:
        ops: the transforms to apply, e.g. ``('brightness', 'saturation', 'contrast')``.
        image_size: ``(H, W)`` the parameters were drawn for (crop and cutout are in pixels).
        brightness: ``[n]`` additive shift ``b`` (identity: 0).
        saturation: ``[n]`` factor ``s`` on the deviation from the channel mean (identity: 1).
        contrast: ``[n]`` factor ``k`` on the deviation from the image mean (identity: 1).
        crop: ``[n, 2]`` int64 ``(dr, dc)``: output pixel ``(i, j)`` shows input pixel
            ``(i + dr, j + dc)``, 0 outside the image (identity: 0, 0).
        cutout: ``[n, 4]`` int64 box ``(top, left, bottom, right)``, half-open, possibly reaching
            outside the image; pixels inside are set to 0 (identity: an empty box).
        flip: ``[n]`` bool, flip horizontally (identity: False).
        scale: ``[n, 2]`` ``(sx, sy)`` factors on the horizontal and vertical sampling
            coordinates (identity: 1, 1).
        rotate: ``[n]`` angle of the sampling grid in radians (identity: 0).
    """

    ops: tuple[str, ...]
    image_size: tuple[int, int]
    brightness: Tensor | None = None
    saturation: Tensor | None = None
    contrast: Tensor | None = None
    crop: Tensor | None = None
    cutout: Tensor | None = None
    flip: Tensor | None = None
    scale: Tensor | None = None
    rotate: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """``n``, the leading dimension of the parameters (1 when ``ops`` is empty)."""
        return next((len(getattr(self, op)) for op in self.ops), 1)


class SiameseAugment:
    """Differentiable siamese augmentation: `sample` parameters once, `apply` them to several batches.

    See the module docstring for the transforms and for which draws are shared. Typical use, with
    a real batch and a synthetic batch of one class::

        aug = SiameseAugment("color_crop_cutout_flip_scale_rotate")
        params = aug.sample(1, generator, image_size=x_real.shape[-2:])  # one draw, as the official seed != -1
        loss = match(net(aug.apply(x_real, params)), net(aug.apply(x_syn, params)))

    Args:
        strategy: ``_``-separated groups among ``color, crop, cutout, flip, scale, rotate``;
            ``''`` or ``'none'`` for no augmentation.
        mode: ``'single'`` (one group per draw, official ``'S'``) or ``'multiple'`` (all, ``'M'``).
        scale: ``ratio_scale``, >= 1: the scale factors lie in ``[1/scale, scale]``.
        rotate: ``ratio_rotate`` in degrees, >= 0: the angle lies in ``[-rotate, rotate]``.
        brightness: >= 0, the width of the brightness shift's range, centred on 0.
        saturation: >= 0, the saturation factor lies in ``[0, saturation]``.
        contrast: >= 0, the contrast factor lies in ``[contrast, contrast + 1]``.
        crop: ``ratio_crop_pad`` in ``[0, 1]``: the largest shift as a fraction of the image size.
        cutout: ``ratio_cutout`` in ``[0, 1]``: the box side as a fraction of the image size.
        flip: ``prob_flip`` in ``[0, 1]``.
        align_corners: passed to ``affine_grid``/``grid_sample`` for scale and rotate
            (``False``: DatasetCondensation; ``True``: mtt-distillation).
    """

    def __init__(
        self,
        strategy: str = "color_crop_cutout_flip_scale_rotate",
        *,
        mode: Literal["single", "multiple"] = "single",
        scale: float = 1.2,
        rotate: float = 15.0,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
        crop: float = 0.125,
        cutout: float = 0.5,
        flip: float = 0.5,
        align_corners: bool = False,
    ):
        problems = []
        if not isinstance(strategy, str):
            problems.append(
                "The 'strategy' parameter of SiameseAugment must be a string such as "
                f"'color_crop_cutout_flip_scale_rotate'. Got {strategy!r}."
            )
        else:
            unknown = [g for g in _split(strategy) if g not in GROUPS]
            if unknown:
                problems.append(
                    f"The 'strategy' parameter of SiameseAugment has unknown group(s) {', '.join(map(repr, unknown))}; "
                    f"use '_'-separated names among {', '.join(GROUPS)} (or 'none'). Got {strategy!r}."
                )
        if mode not in ("single", "multiple"):
            problems.append(f"The 'mode' parameter of SiameseAugment must be 'single' or 'multiple'. Got {mode!r}.")
        for name, value, low, high in (
            ("scale", scale, 1.0, math.inf), ("rotate", rotate, 0.0, math.inf),
            ("brightness", brightness, 0.0, math.inf), ("saturation", saturation, 0.0, math.inf),
            ("contrast", contrast, 0.0, math.inf),
            ("crop", crop, 0.0, 1.0), ("cutout", cutout, 0.0, 1.0), ("flip", flip, 0.0, 1.0),
        ):
            if not is_finite_number(value) or not low <= value <= high:
                bound = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
                problems.append(
                    f"The '{name}' parameter of SiameseAugment must be a finite float {bound}. Got {value!r}."
                )
        if not isinstance(align_corners, bool):
            problems.append(f"The 'align_corners' parameter of SiameseAugment must be a bool. Got {align_corners!r}.")
        if problems:
            raise ValueError("\n".join(problems))
        self.strategy, self.mode, self.align_corners = strategy, mode, align_corners
        self.scale, self.rotate, self.brightness = float(scale), float(rotate), float(brightness)
        self.saturation, self.contrast = float(saturation), float(contrast)
        self.crop, self.cutout, self.flip = float(crop), float(cutout), float(flip)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    @property
    def groups(self) -> tuple[str, ...]:
        """The strategy's groups, in order (empty for ``''``/``'none'``)."""
        return _split(self.strategy)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, *, image_size: int | tuple[int, int]
    ) -> AugmentParams:
        """Draw parameters for ``batch_size`` images of size ``image_size``.

        Args:
            batch_size: the number of independent draws ``n``. Use 1 for the siamese/batch mode
                (one draw applied to every image of the real and the synthetic batch, the
                official ``seed != -1``); use the batch size for per-image draws (``seed == -1``).
            generator: the source of randomness (on any device; the parameters stay there);
                ``None`` uses torch's global RNG.
            image_size: ``H`` or ``(H, W)`` of the images (crop shifts and cutout boxes are in pixels;
                ``x.shape[-2:]`` works).

        Returns:
            `AugmentParams` with leading dimension ``batch_size``. In single mode the group is
            drawn first, then the parameters of its transforms in order; in multiple mode those of
            every group in order.
        """
        size, problems = as_image_size(image_size), []
        if not is_int(batch_size) or batch_size < 1:
            problems.append(f"The 'batch_size' argument of SiameseAugment.sample must be an int >= 1. Got {batch_size!r}.")
        if size is None:
            problems.append(
                "The 'image_size' argument of SiameseAugment.sample must be an int >= 1 or a pair (H, W) of them. "
                f"Got {image_size!r}."
            )
        if problems:
            raise ValueError("\n".join(problems))
        n, (height, width) = batch_size, size
        device = generator.device if generator is not None else torch.device("cpu")
        groups = self.groups
        if groups and self.mode == "single":
            groups = (groups[int(torch.randint(len(groups), (1,), generator=generator, device=device))],)
        ops = tuple(op for group in groups for op in GROUPS[group])

        def uniform() -> Tensor:
            return torch.rand(n, generator=generator, device=device)

        def integers(low: int, high: int) -> Tensor:  # U{low, ..., high - 1}
            return torch.randint(low, high, (n,), generator=generator, device=device)

        values: dict[str, Tensor] = {}
        for op in ops:
            if op == "brightness":
                values[op] = (uniform() - 0.5) * self.brightness
            elif op == "saturation":
                values[op] = uniform() * self.saturation
            elif op == "contrast":
                values[op] = uniform() + self.contrast
            elif op == "crop":
                shift_h, shift_w = int(height * self.crop + 0.5), int(width * self.crop + 0.5)
                values[op] = torch.stack([integers(-shift_h, shift_h + 1), integers(-shift_w, shift_w + 1)], dim=1)
            elif op == "cutout":
                box_h, box_w = int(height * self.cutout + 0.5), int(width * self.cutout + 0.5)
                # The official centre range: an even-sized box may also be centred one past the end.
                top = integers(0, height + 1 - box_h % 2) - box_h // 2
                left = integers(0, width + 1 - box_w % 2) - box_w // 2
                values[op] = torch.stack([top, left, top + box_h, left + box_w], dim=1)
            elif op == "flip":
                values[op] = uniform() < self.flip
            elif op == "scale":
                low = 1.0 / self.scale
                sx, sy = uniform() * (self.scale - low) + low, uniform() * (self.scale - low) + low
                values[op] = torch.stack([sx, sy], dim=1)
            else:  # rotate
                values[op] = (uniform() - 0.5) * 2.0 * math.radians(self.rotate)
        return AugmentParams(ops=ops, image_size=size, **values)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply ``params`` to ``x``: ``[B, C, H, W] -> [B, C, H, W]``, differentiable w.r.t. ``x``.

        Deterministic and draws nothing, so the same ``params`` on the real and on the synthetic
        batch apply the same transformation to both.

        Args:
            x: images of size ``params.image_size``.
            params: from `sample`, with ``params.batch_size`` 1 (broadcast over ``B``) or ``B``.

        Raises:
            ValueError: ``x`` is not 4-D, or its size or batch does not fit ``params``.
        """
        problems = []
        if x.dim() != 4:
            problems.append(f"SiameseAugment.apply needs images [B, C, H, W]. Got shape {tuple(x.shape)}.")
        else:
            if tuple(x.shape[-2:]) != tuple(params.image_size):
                problems.append(
                    f"SiameseAugment.apply got {x.shape[-2]}x{x.shape[-1]} images but parameters drawn for "
                    f"{params.image_size[0]}x{params.image_size[1]}; sample with image_size=x.shape[-2:]."
                )
            if params.batch_size not in (1, x.shape[0]):
                problems.append(
                    f"SiameseAugment.apply got a batch of {x.shape[0]} images but parameters for {params.batch_size}; "
                    "sample 1 draw (shared by the batch) or one per image."
                )
        missing = [op for op in params.ops if getattr(params, op, None) is None]
        if missing:
            problems.append(f"The AugmentParams name transform(s) {missing} in 'ops' but do not set them.")
        if problems:
            raise ValueError("\n".join(problems))
        for op in params.ops:
            x = getattr(self, f"_{op}")(x, getattr(params, op).to(x.device))
        return x.contiguous() if params.ops else x

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x [B, C, H, W]`` with an independent draw per image (the official ``seed == -1``),
        as when training a network on the synthetic set."""
        return self.apply(x, self.sample(x.shape[0], generator, image_size=tuple(x.shape[-2:])))

    # The transforms. Each takes x [B, C, H, W] and its parameter with leading dimension 1 or B.

    @staticmethod
    def _brightness(x: Tensor, b: Tensor) -> Tensor:
        return x + b.to(x.dtype).view(-1, 1, 1, 1)

    @staticmethod
    def _saturation(x: Tensor, s: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) * s.to(x.dtype).view(-1, 1, 1, 1) + mean

    @staticmethod
    def _contrast(x: Tensor, k: Tensor) -> Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * k.to(x.dtype).view(-1, 1, 1, 1) + mean

    @staticmethod
    def _flip(x: Tensor, flip: Tensor) -> Tensor:
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)

    @staticmethod
    def _cutout(x: Tensor, box: Tensor) -> Tensor:
        rows = torch.arange(x.shape[2], device=x.device)
        cols = torch.arange(x.shape[3], device=x.device)
        in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 2:3])  # [n, H]
        in_cols = (cols >= box[:, 1:2]) & (cols < box[:, 3:4])  # [n, W]
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # [n, H, W]
        return x * keep.unsqueeze(1).to(x.dtype)

    def _crop(self, x: Tensor, shift: Tensor) -> Tensor:
        height, width = x.shape[2], x.shape[3]
        theta = torch.zeros(len(shift), 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        # With align_corners=False one pixel is 2/W in normalised coordinates, so an integer shift
        # lands exactly on pixel centres and nearest sampling copies pixels, with zeros shifted in.
        theta[:, 0, 2] = 2.0 * shift[:, 1].to(x.dtype) / width
        theta[:, 1, 2] = 2.0 * shift[:, 0].to(x.dtype) / height
        return _resample(x, theta, mode="nearest", align_corners=False)

    def _scale(self, x: Tensor, factors: Tensor) -> Tensor:
        theta = torch.zeros(len(factors), 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1] = factors[:, 0].to(x.dtype), factors[:, 1].to(x.dtype)
        return _resample(x, theta, mode="bilinear", align_corners=self.align_corners)

    def _rotate(self, x: Tensor, angle: Tensor) -> Tensor:
        cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
        theta = torch.zeros(len(angle), 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        return _resample(x, theta, mode="bilinear", align_corners=self.align_corners)


def _resample(x: Tensor, theta: Tensor, *, mode: str, align_corners: bool) -> Tensor:
    """``grid_sample`` of ``x [B, C, H, W]`` on the affine grid of ``theta [1 or B, 2, 3]`` (zeros outside)."""
    theta = theta.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=align_corners)


def _split(strategy: str) -> tuple[str, ...]:
    if strategy.strip().lower() in ("", "none"):
        return ()
    return tuple(strategy.split("_"))


