"""The 2-D toy distributions: shapes, determinism, and the geometry their docstrings state."""

import math

import pytest
import torch

from anydistill.data import toy2d_distributions as toy2d
from anydistill.data.toy2d_distributions import TOY2D, class_conditional_mixture, in_checkerboard, mode_std, modes

N = 4000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(TOY2D))
def test_shape_dtype_and_determinism(name):
    sampler = TOY2D[name]
    state = torch.get_rng_state()
    a = sampler(N, gen(1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched
    assert a.shape == (N, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, sampler(N, gen(1)))
    assert not torch.equal(a, sampler(N, gen(2)))
    assert sampler(0, gen()).shape == (0, 2)
    assert a.abs().max() < 4.0  # the documented support, within about [-3.6, 3.6]^2


def test_bad_n_is_reported():
    with pytest.raises(ValueError, match="The 'n' argument of checkerboard must be an int >= 0"):
        toy2d.checkerboard(-1, gen())


@pytest.mark.parametrize("name, k", [("eight_gaussians", 8), ("twenty_five_gaussians", 25)])
def test_mixture_samples_cluster_at_their_modes(name, k):
    centres, std = modes(name), mode_std(name)
    assert centres.shape == (k, 2) and std == 0.02
    x = TOY2D[name](N, gen())
    dist, nearest = torch.cdist(x, centres).min(dim=1)
    assert (dist < 5 * std).all()
    counts = torch.bincount(nearest, minlength=k).float()
    assert (counts > 0.5 * N / k).all()  # roughly equal weights (expected N / k each)
    # Per-axis spread around the assigned mode is the stated std.
    assert (x - centres[nearest]).std().item() == pytest.approx(std, rel=0.05)


def test_mode_geometry():
    ring = modes("eight_gaussians")
    assert torch.allclose(ring.norm(dim=1), torch.full((8,), toy2d.EIGHT_GAUSSIANS_RADIUS))
    assert torch.allclose(ring[2], torch.tensor([0.0, 2.0]), atol=1e-6)
    grid = modes("twenty_five_gaussians")
    assert sorted(set(grid[:, 0].tolist())) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert len({tuple(r) for r in grid.tolist()}) == 25
    for name in ("checkerboard", "two_moons", "swiss_roll"):
        assert modes(name) is None and mode_std(name) is None


def test_unknown_name_suggests_the_closest():
    with pytest.raises(LookupError, match="did you mean 'eight_gaussians'"):
        modes("eight_gaussian")


def test_checkerboard_cells():
    x = toy2d.checkerboard(N, gen())
    assert in_checkerboard(x).all()
    assert (x.abs() <= 2.0).all()
    cells = torch.floor(x).long() + 2  # (i, j) in 0..3
    assert ((cells.sum(dim=1) % 2) == 0).all()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    filled = counts > 0
    assert filled.sum() == 8
    assert (counts[filled] > 0.7 * N / 8).all()
    # Membership test: centres of an empty cell and of a filled cell, and a point off the board.
    assert in_checkerboard(torch.tensor([[-1.5, -1.5], [-0.5, -1.5], [2.5, 2.5]])).tolist() == [
        True, False, False]


def _half_circle_distance(p, centre, upper):
    """Distance of rows of ``p`` to the upper (or lower) half unit circle around ``centre``."""
    q = p - torch.tensor(centre, dtype=p.dtype)
    on_side = q[:, 1] >= 0 if upper else q[:, 1] <= 0
    to_circle = (q.norm(dim=1) - 1).abs()
    ends = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=p.dtype)
    to_ends = torch.cdist(q, ends).min(dim=1).values
    return torch.where(on_side, to_circle, to_ends)


def test_two_moons_lies_near_its_two_arcs():
    x = toy2d.two_moons(N, gen()).double()
    p = x / toy2d.TWO_MOONS_SCALE + torch.tensor(toy2d.TWO_MOONS_CENTER, dtype=torch.float64)
    d_outer = _half_circle_distance(p, (0.0, 0.0), upper=True)
    d_inner = _half_circle_distance(p, (1.0, 0.5), upper=False)
    assert (torch.minimum(d_outer, d_inner) < 5 * toy2d.TWO_MOONS_NOISE).all()
    assert 0.45 < (d_inner < d_outer).double().mean() < 0.55
    assert x.mean(dim=0).abs().max() < 0.05  # re-centred


def test_swiss_roll_matches_its_parametrisation():
    x = toy2d.swiss_roll(N, gen()).double() / toy2d.SWISS_ROLL_SCALE
    r = x.norm(dim=1)  # noiseless radius t lies in [1.5 pi, 4.5 pi]
    assert (r > 1.5 * math.pi - 5).all() and (r < 4.5 * math.pi + 5).all()
    assert r.mean().item() == pytest.approx(3 * math.pi, abs=0.3)


def test_class_conditional_labels_match_their_gaussian():
    x, y = class_conditional_mixture(N, gen(), num_classes=8)
    assert x.shape == (N, 2) and x.dtype == torch.float32
    assert y.shape == (N,) and y.dtype == torch.long
    assert set(y.tolist()) == set(range(8))
    means = modes("class_conditional_mixture")
    assert torch.equal(means, toy2d.class_means(8))
    std = mode_std("class_conditional_mixture")
    assert (torch.cdist(x, means).argmin(dim=1) == y).all()
    assert ((x - means[y]).norm(dim=1) < 5 * std).all()
    assert (x - means[y]).std().item() == pytest.approx(std, rel=0.05)
    again = class_conditional_mixture(N, gen(), num_classes=8)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    x3, y3 = class_conditional_mixture(100, gen(), num_classes=3)
    assert y3.max() == 2 and (torch.cdist(x3, toy2d.class_means(3)).argmin(dim=1) == y3).all()


def test_class_submode_mixture_puts_each_class_on_its_four_sub_modes_equally():
    x, y = toy2d.class_submode_mixture(N, gen())
    centres, classes = modes("class_submode_mixture"), toy2d.mode_classes("class_submode_mixture")
    assert centres.shape == (32, 2) and torch.equal(classes, torch.arange(8).repeat_interleave(4))
    nearest = torch.cdist(x, centres).argmin(dim=1)
    assert torch.equal(classes[nearest], y)  # every point's nearest sub-mode is one of its class's
    assert ((x - centres[nearest]).norm(dim=1) < 5 * mode_std("class_submode_mixture")).all()
    share = torch.bincount(nearest, minlength=32).double() / N
    assert share.min() > 0.5 / 32 and share.max() < 1.5 / 32
    assert torch.equal(x, toy2d.class_submode_mixture(N, gen())[0])
