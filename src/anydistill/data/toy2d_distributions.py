"""Two-dimensional toy distributions for diffusion and flow distillation benchmarks.

Every sampler is a pure function ``sampler(n, generator) -> Tensor [n, 2]`` (float32, CPU) that
draws *all* its randomness from ``generator``: the same generator state gives the same samples,
and nothing touches torch's global RNG (or NumPy's, or scikit-learn's). All supports lie within
about ``[-3.6, 3.6]^2`` (the swiss roll is the widest) with per-axis stds between 0.66 and 1.42,
so one noise schedule suits them all.

=========================== ================================================================
``eight_gaussians``         ring of 8 Gaussians, radius 2, std 0.02 (Metz et al. 2017,
                            "Unrolled GANs"; the ring of VEEGAN / PacGAN)
``twenty_five_gaussians``   5x5 grid of Gaussians at {-2,-1,0,1,2}^2, std 0.02
``checkerboard``            uniform on the 8 "black" unit cells of a 4x4 board on [-2, 2]^2
``two_moons``               scikit-learn's ``make_moons`` geometry, re-centred and rescaled
``swiss_roll``              FFJORD's 2-D swiss roll (sklearn ``make_swiss_roll`` axes 0 and 2, / 5)
=========================== ================================================================

``TOY2D`` maps these names to their samplers. ``class_conditional_mixture`` (one Gaussian per
class on a ring, for classifier-free guidance) and ``class_submode_mixture`` (the same 8 classes,
each a ring of 4 tight sub-modes, for within-class diversity: mode-seeking distillation keeps the
class and drops sub-modes) return labels too, so they are not in ``TOY2D``. For the mixtures,
``modes(name)`` gives the centres ``[K, 2]``, ``mode_std(name)`` the per-axis std (what
``anydistill.diffusion.sample_metrics.mode_coverage`` takes) and ``mode_classes(name)`` the class of
each centre.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor

Sampler = Callable[[int, torch.Generator], Tensor]

# Ring of 8 (Metz et al. 2017): modes at 2 * (cos(2 pi k / 8), sin(2 pi k / 8)), k = 0..7.
EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.02

# 5x5 grid. VEEGAN / PacGAN use a grid spacing of 2 with std 0.05 (spacing/std = 40); we keep
# the spacing of 1 that fits [-2, 2]^2 and use the ring's std 0.02 (spacing/std = 50), so both
# mixtures share one "high-quality" radius 3 * std = 0.06 and neighbouring 3-std balls are ~16
# radii apart: mode assignment is never ambiguous, and a collapsed or blurred student shows.
TWENTY_FIVE_GAUSSIANS_LEVELS = (-2.0, -1.0, 0.0, 1.0, 2.0)
TWENTY_FIVE_GAUSSIANS_STD = 0.02

# Checkerboard: CELLS x CELLS unit cells on [-HALF_WIDTH, HALF_WIDTH]^2; a cell (i, j), counted
# from the lower-left corner, is filled when i + j is even (8 of the 16 cells), density 1/8 on each.
CHECKERBOARD_HALF_WIDTH = 2.0
CHECKERBOARD_CELLS = 4

# Two moons: sklearn's curves, outer (cos t, sin t) and inner (1 - cos t, 0.5 - sin t),
# t ~ U[0, pi], plus Gaussian noise of std TWO_MOONS_NOISE in sklearn's units; then
# (p - CENTER) * SCALE maps the noiseless x-range [-1, 2] onto [-2, 2] (y-range [-0.5, 1] onto
# [-1, 1]); CENTER is also the mean of the distribution.
TWO_MOONS_NOISE = 0.05
TWO_MOONS_CENTER = (0.5, 0.25)
TWO_MOONS_SCALE = 4.0 / 3.0

# Swiss roll as in FFJORD (Grathwohl et al. 2019): t ~ 1.5 pi (1 + 2 U[0, 1]),
# p = (t cos t, t sin t) + N(0, NOISE^2 I), then p * SCALE.
SWISS_ROLL_NOISE = 1.0
SWISS_ROLL_SCALE = 0.2

# Class-conditional mixture: class c ~ U{0..K-1}, x | c ~ N(R (cos 2 pi c / K, sin 2 pi c / K),
# STD^2 I). Wider than the unconditional ring on purpose: CFG sharpens and shifts each class, and
# per-class diversity is measurable only if a class has a visible spread. With K = 8 the
# neighbouring means are 2 R sin(pi / 8) = 1.53 apart, 7.7 stds: the classes do not overlap.
CLASS_MIXTURE_RADIUS = 2.0
CLASS_MIXTURE_STD = 0.2
CLASS_MIXTURE_NUM_CLASSES = 8
# Sub-mode mixture: class c's mean above plus one of SUBMODES offsets on a ring of SUBMODE_RADIUS,
# std SUBMODE_STD: neighbouring sub-modes 0.35 sqrt(2) = 0.49 apart (9.9 stds), and the nearest
# sub-modes of neighbouring classes 1.53 - 2 x 0.35 = 0.83 apart.
SUBMODES = 4
SUBMODE_RADIUS = 0.35
SUBMODE_STD = 0.05


def _ring(num: int, radius: float) -> Tensor:
    """``[num, 2]`` float32 points ``radius * (cos(2 pi k / num), sin(2 pi k / num))``."""
    angle = 2 * math.pi * torch.arange(num, dtype=torch.float64) / num
    return (radius * torch.stack([angle.cos(), angle.sin()], dim=1)).float()


def _grid() -> Tensor:
    levels = torch.tensor(TWENTY_FIVE_GAUSSIANS_LEVELS, dtype=torch.float32)
    gx, gy = torch.meshgrid(levels, levels, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def _check_n(func: str, n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"The 'n' argument of {func} must be an int >= 0. Got {n!r}.")


def _mixture(n: int, generator: torch.Generator, means: Tensor, std: float) -> Tensor:
    """``n`` draws from the equal-weight mixture of ``N(means[k], std^2 I)``."""
    component = torch.randint(len(means), (n,), generator=generator)
    return means[component] + std * torch.randn(n, 2, generator=generator)


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """``[n, 2]`` samples of the ring of 8 equal-weight Gaussians.

    Mode ``k`` is at ``EIGHT_GAUSSIANS_RADIUS * (cos(2 pi k / 8), sin(2 pi k / 8))`` (radius 2),
    isotropic std ``EIGHT_GAUSSIANS_STD`` (0.02), as in Metz et al. (2017), "Unrolled GANs".
    """
    _check_n("eight_gaussians", n)
    return _mixture(n, generator, _ring(8, EIGHT_GAUSSIANS_RADIUS), EIGHT_GAUSSIANS_STD)


def twenty_five_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """``[n, 2]`` samples of the 5x5 grid of equal-weight Gaussians.

    Modes at ``{-2, -1, 0, 1, 2}^2`` (``TWENTY_FIVE_GAUSSIANS_LEVELS``), isotropic std
    ``TWENTY_FIVE_GAUSSIANS_STD`` (0.02; the module comment says why not PacGAN's 0.05 on a grid
    of spacing 2).
    """
    _check_n("twenty_five_gaussians", n)
    return _mixture(n, generator, _grid(), TWENTY_FIVE_GAUSSIANS_STD)


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """``[n, 2]`` samples, uniform on the filled cells of a 4x4 checkerboard on ``[-2, 2]^2``.

    Cell ``(i, j) = (floor(x) + 2, floor(y) + 2)`` is filled when ``i + j`` is even: 8 unit cells,
    density 1/8 on each, 0 elsewhere (``in_checkerboard`` tests membership). Same board as FFJORD's
    ``checkerboard`` scaled by 1/2.
    """
    _check_n("checkerboard", n)
    i = torch.randint(CHECKERBOARD_CELLS, (n,), generator=generator)
    # Among the columns of row i, the filled ones are those with j = i (mod 2).
    j = 2 * torch.randint(CHECKERBOARD_CELLS // 2, (n,), generator=generator) + i % 2
    corner = torch.stack([i, j], dim=1).float() - CHECKERBOARD_HALF_WIDTH
    cell_size = 2 * CHECKERBOARD_HALF_WIDTH / CHECKERBOARD_CELLS
    return (corner + torch.rand(n, 2, generator=generator)) * cell_size


def in_checkerboard(x: Tensor) -> Tensor:
    """``[N]`` bool: which rows of ``x`` ``[N, 2]`` fall on a filled cell of ``checkerboard``.

    The fraction of ``True`` is a precision proxy for checkerboard samples (1 for exact samples).
    """
    cell_size = 2 * CHECKERBOARD_HALF_WIDTH / CHECKERBOARD_CELLS
    ij = torch.floor((x.double() + CHECKERBOARD_HALF_WIDTH) / cell_size).long()
    inside = ((ij >= 0) & (ij < CHECKERBOARD_CELLS)).all(dim=1)
    return inside & (ij.sum(dim=1) % 2 == 0)


def two_moons(n: int, generator: torch.Generator) -> Tensor:
    """``[n, 2]`` samples of two interleaved half circles (scikit-learn's ``make_moons`` shape).

    Each point picks a moon with probability 1/2 and ``t ~ U[0, pi]``; the outer moon is
    ``(cos t, sin t)``, the inner ``(1 - cos t, 0.5 - sin t)``; Gaussian noise of std
    ``TWO_MOONS_NOISE`` (0.05) is added, then ``(p - (0.5, 0.25)) * 4/3`` maps the noiseless curves
    onto x in [-2, 2], y in [-1, 1]. Unlike ``make_moons`` the angles are random, not a linspace,
    and all randomness comes from ``generator``.
    """
    _check_n("two_moons", n)
    inner = torch.rand(n, generator=generator) < 0.5
    t = math.pi * torch.rand(n, generator=generator)
    outer_pts = torch.stack([t.cos(), t.sin()], dim=1)
    inner_pts = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
    p = torch.where(inner[:, None], inner_pts, outer_pts)
    p = p + TWO_MOONS_NOISE * torch.randn(n, 2, generator=generator)
    return (p - torch.tensor(TWO_MOONS_CENTER)) * TWO_MOONS_SCALE


def swiss_roll(n: int, generator: torch.Generator) -> Tensor:
    """``[n, 2]`` samples of the 2-D swiss roll of FFJORD (Grathwohl et al., 2019).

    ``t = 1.5 pi (1 + 2 u)``, ``u ~ U[0, 1]``; ``p = (t cos t, t sin t) + N(0, 1)``; returns
    ``0.2 * p`` (``SWISS_ROLL_NOISE``, ``SWISS_ROLL_SCALE``). This is sklearn's
    ``make_swiss_roll(noise=1.0)[:, [0, 2]] / 5`` with the randomness taken from ``generator``.
    """
    _check_n("swiss_roll", n)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    p = torch.stack([t * t.cos(), t * t.sin()], dim=1)
    p = p + SWISS_ROLL_NOISE * torch.randn(n, 2, generator=generator)
    return p * SWISS_ROLL_SCALE


def class_means(num_classes: int = CLASS_MIXTURE_NUM_CLASSES) -> Tensor:
    """``[num_classes, 2]``: mean of class ``c`` is ``2 * (cos(2 pi c / K), sin(2 pi c / K))``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"The 'num_classes' argument of class_means must be an int >= 1. Got {num_classes!r}."
        )
    return _ring(num_classes, CLASS_MIXTURE_RADIUS)


def class_conditional_mixture(
    n: int, generator: torch.Generator, num_classes: int = CLASS_MIXTURE_NUM_CLASSES
) -> tuple[Tensor, Tensor]:
    """Labelled samples of one Gaussian per class on a ring, for classifier-free guidance.

    ``y ~ U{0, ..., K-1}`` and ``x | y ~ N(class_means(K)[y], 0.2^2 I)`` (radius
    ``CLASS_MIXTURE_RADIUS`` = 2, std ``CLASS_MIXTURE_STD`` = 0.2).

    Returns:
        ``x`` ``[n, 2]`` float32 and ``y`` ``[n]`` int64.
    """
    _check_n("class_conditional_mixture", n)
    means = class_means(num_classes)
    y = torch.randint(num_classes, (n,), generator=generator)
    x = means[y] + CLASS_MIXTURE_STD * torch.randn(n, 2, generator=generator)
    return x, y


def submode_means(num_classes: int = CLASS_MIXTURE_NUM_CLASSES) -> Tensor:
    """``[num_classes * SUBMODES, 2]``: row ``c * SUBMODES + j`` is class ``c``'s ``j``-th sub-mode,
    ``class_means(K)[c] + SUBMODE_RADIUS (cos(2 pi j / S + pi / 4), sin(...))`` (turned by pi/4 so
    no sub-mode points at a neighbouring class)."""
    angle = 2 * math.pi * torch.arange(SUBMODES, dtype=torch.float64) / SUBMODES + math.pi / 4
    offsets = SUBMODE_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1).float()
    return (class_means(num_classes)[:, None, :] + offsets[None]).reshape(-1, 2)


def class_submode_mixture(
    n: int, generator: torch.Generator, num_classes: int = CLASS_MIXTURE_NUM_CLASSES
) -> tuple[Tensor, Tensor]:
    """Labelled samples of the class-conditional mixture whose classes have ``SUBMODES`` sub-modes each.

    ``y ~ U{0..K-1}``, ``j ~ U{0..S-1}`` and ``x | y, j ~ N(submode_means(K)[y S + j], 0.05^2 I)``.

    Returns:
        ``x`` ``[n, 2]`` float32 and ``y`` ``[n]`` int64.
    """
    _check_n("class_submode_mixture", n)
    y = torch.randint(num_classes, (n,), generator=generator)
    j = torch.randint(SUBMODES, (n,), generator=generator)
    x = submode_means(num_classes)[y * SUBMODES + j] + SUBMODE_STD * torch.randn(n, 2, generator=generator)
    return x, y


TOY2D: dict[str, Sampler] = {
    "eight_gaussians": eight_gaussians,
    "twenty_five_gaussians": twenty_five_gaussians,
    "checkerboard": checkerboard,
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
}

_MIXTURES: dict[str, tuple[Callable[[], Tensor], float]] = {
    "eight_gaussians": (lambda: _ring(8, EIGHT_GAUSSIANS_RADIUS), EIGHT_GAUSSIANS_STD),
    "twenty_five_gaussians": (_grid, TWENTY_FIVE_GAUSSIANS_STD),
    "class_conditional_mixture": (class_means, CLASS_MIXTURE_STD),
    "class_submode_mixture": (submode_means, SUBMODE_STD),
}
LABELLED = {"class_conditional_mixture": class_conditional_mixture, "class_submode_mixture": class_submode_mixture}


def _check_name(func: str, name: str) -> None:
    known = [*TOY2D, *LABELLED]
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        raise LookupError(
            f"The 'name' argument of {func} must be one of {known}. Got {name!r}{hint}"
        )


def modes(name: str) -> Tensor | None:
    """Mode centres ``[K, 2]`` (float32) of the toy distribution ``name``, or ``None`` if it is
    not a Gaussian mixture (checkerboard, two_moons, swiss_roll).

    ``"class_conditional_mixture"`` gives the default 8 class means (row ``c`` is class ``c``);
    use ``class_means(num_classes)`` for another number of classes.
    """
    _check_name("modes", name)
    return _MIXTURES[name][0]() if name in _MIXTURES else None


def mode_std(name: str) -> float | None:
    """Isotropic per-axis std of each mixture component of ``name``, or ``None`` (no modes)."""
    _check_name("mode_std", name)
    return _MIXTURES[name][1] if name in _MIXTURES else None


def mode_classes(name: str) -> Tensor | None:
    """``[K]`` int64: the class of each of ``modes(name)`` for the labelled mixtures (``None`` otherwise)."""
    _check_name("mode_classes", name)
    if name not in LABELLED:
        return None
    per_class = SUBMODES if name == "class_submode_mixture" else 1
    return torch.arange(CLASS_MIXTURE_NUM_CLASSES).repeat_interleave(per_class)
