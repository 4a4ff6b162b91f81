"""Sample metrics against closed forms, brute-force references and SciPy."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from anydistill.diffusion.sample_metrics import (
    coupling_error,
    energy_distance,
    mmd_rbf,
    mode_coverage,
    sliced_wasserstein,
    straightness,
    within_class_modes,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------- sliced Wasserstein


def test_swd_same_distribution_small_shifted_large():
    x, y = randn(1000, 2, seed=1), randn(1000, 2, seed=2)
    same = sliced_wasserstein(x, y)
    shifted = sliced_wasserstein(x, y + torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert same < 0.1 and shifted > 0.6
    assert sliced_wasserstein(x, x) == 0.0


def test_swd_of_1d_point_masses_is_the_shift():
    x = torch.zeros(5, 1)
    assert sliced_wasserstein(x, x + 0.7, num_projections=3) == pytest.approx(0.7)
    assert sliced_wasserstein(x, x - 0.7, num_projections=3, p=1) == pytest.approx(0.7)


@pytest.mark.parametrize("dim", [2, 5])
def test_swd_of_a_shift_is_norm_over_sqrt_dim(dim):
    # y = x + s: every projection is shifted by s.theta, so SW_2^2 = E[(s.theta)^2] = |s|^2 / D.
    x = randn(64, dim, seed=3)
    s = torch.linspace(0.5, 1.5, dim, dtype=torch.float64)
    sw = sliced_wasserstein(x, x + s, num_projections=20000, generator=gen(4))
    assert sw**2 == pytest.approx(s.square().sum().item() / dim, rel=0.03)


def test_swd_unequal_sizes_are_exact():
    x = randn(40, 2, seed=5)
    # The same empirical distribution, with every point twice: distance 0.
    assert sliced_wasserstein(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-12)
    # In 1-D the projections are +-x itself: W1 must equal SciPy's exact W1, and W2^2 the
    # integral of the squared quantile difference (fine midpoint rule on the step functions).
    a, b = randn(50, 1, seed=6), randn(37, 1, seed=7) + 0.3
    expected_w1 = scipy.stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert sliced_wasserstein(a, b, p=1) == pytest.approx(expected_w1, rel=1e-9)
    u = (np.arange(50 * 37 * 8) + 0.5) / (50 * 37 * 8)
    qa = np.sort(a[:, 0].numpy())[np.floor(u * 50).astype(int)]
    qb = np.sort(b[:, 0].numpy())[np.floor(u * 37).astype(int)]
    assert sliced_wasserstein(a, b) ** 2 == pytest.approx(np.mean((qa - qb) ** 2), rel=1e-9)


def test_swd_is_deterministic_and_accepts_float32():
    x, y = randn(100, 2, seed=8).float(), randn(80, 2, seed=9).float()
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)
    assert sliced_wasserstein(x, y, generator=gen(1)) == sliced_wasserstein(x, y, generator=gen(1))


def test_invalid_arguments_are_reported_together():
    with pytest.raises(ValueError) as info:
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3), num_projections=0, p=3)
    message = str(info.value)
    assert "'num_projections' argument of sliced_wasserstein must be an int >= 1. Got 0." in message
    assert "'p' argument" in message and "same number of columns D. Got 2 and 3." in message


# ---------------------------------------------------------------------------- MMD


def _mmd_reference(x, y, bandwidths):
    def k(a, b):
        d2 = ((a - b) ** 2).sum()
        return sum(math.exp(-d2 / (2 * s * s)) for s in bandwidths) / len(bandwidths)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return float(xx + yy - 2 * xy)


def test_mmd_matches_the_unbiased_formula_and_is_symmetric():
    x, y = randn(12, 3, seed=10), randn(9, 3, seed=11) * 0.5 + 0.2
    bandwidths = (0.3, 1.0)
    value = mmd_rbf(x, y, bandwidths)
    assert value == pytest.approx(_mmd_reference(x, y, bandwidths), rel=1e-12)
    assert mmd_rbf(y, x, bandwidths) == pytest.approx(value, rel=1e-12)


def test_mmd_is_zero_in_expectation_and_positive_when_shifted():
    same = [mmd_rbf(randn(200, 2, seed=2 * i), randn(200, 2, seed=2 * i + 1)) for i in range(10)]
    shifted = mmd_rbf(randn(200, 2, seed=100), randn(200, 2, seed=101) + 1.0)
    spread = float(np.std(same))
    assert abs(float(np.mean(same))) < 3 * spread / math.sqrt(len(same)) + 1e-4
    assert min(same) < 0 < max(same)  # unbiased: not clipped at 0
    assert shifted > 10 * max(abs(v) for v in same)


# ---------------------------------------------------------------------------- energy distance


def test_energy_distance_matches_scipy_in_1d():
    a, b = randn(50, 1, seed=12), randn(37, 1, seed=13) + 0.3
    expected = scipy.stats.energy_distance(a[:, 0].numpy(), b[:, 0].numpy()) ** 2
    assert energy_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_energy_distance_same_small_shifted_large():
    x, y = randn(500, 2, seed=14), randn(500, 2, seed=15)
    assert energy_distance(x, x) == 0.0
    assert energy_distance(x, y) < 0.02
    assert energy_distance(x, y + 1.0) > 0.5
    assert energy_distance(x, y + 1.0) == pytest.approx(energy_distance(y + 1.0, x), rel=1e-12)


# ---------------------------------------------------------------------------- mode coverage


def _ring(k=8, radius=2.0):
    angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return radius * torch.stack([angle.cos(), angle.sin()], dim=1)


def test_mode_coverage_of_perfect_and_collapsed_samples():
    modes, std = _ring(), 0.02
    component = torch.arange(800) % 8
    perfect = modes[component] + std * randn(800, 2, seed=16).clamp(-2, 2)
    assert mode_coverage(perfect, modes, std) == (1.0, 1.0)
    collapsed = modes[3] + std * randn(500, 2, seed=17).clamp(-2, 2)
    assert mode_coverage(collapsed, modes, std) == (pytest.approx(1 / 8), 1.0)


def test_mode_coverage_counts_quality_and_min_count():
    modes, std = _ring(), 0.02
    # 3 samples on mode 0, 1 on mode 1, 4 far from every mode (the origin).
    x = torch.cat([modes[[0, 0, 0, 1]], torch.zeros(4, 2, dtype=torch.float64)])
    assert mode_coverage(x, modes, std) == (2 / 8, 0.5)
    assert mode_coverage(x, modes, std, min_count=2) == (1 / 8, 0.5)
    # A sample 2.5 std from its mode is high quality for k=3, not for k=2.
    near = modes[:1] + torch.tensor([[2.5 * std, 0.0]], dtype=torch.float64)
    assert mode_coverage(near, modes, std, k=3.0) == (1 / 8, 1.0)
    assert mode_coverage(near, modes, std, k=2.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="'min_count' argument of mode_coverage must be an int"):
        mode_coverage(x, modes, std, min_count=0)


# ---------------------------------------------------------------------------- coupling error


def test_coupling_error():
    x = randn(20, 4, seed=18)
    assert coupling_error(x, x.clone()) == 0.0
    s = torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=torch.float64)
    assert coupling_error(x + s, x) == pytest.approx(5.0)
    images = randn(6, 1, 8, 8, seed=19)
    assert coupling_error(images + 0.5, images) == pytest.approx(0.5 * 8)  # sqrt(64 * 0.25)
    with pytest.raises(ValueError, match="same shape"):
        coupling_error(x, x[:5])


# ---------------------------------------------------------------------------- straightness


def test_straightness_of_straight_lines_is_zero_on_any_grid():
    x0, x1 = randn(30, 2, seed=20), randn(30, 2, seed=21)
    times = torch.tensor([0.0, 0.05, 0.3, 0.31, 0.8, 1.0], dtype=torch.float64)
    trajectory = x0 + times[:, None, None] * (x1 - x0)
    assert straightness(trajectory, times) == pytest.approx(0.0, abs=1e-20)
    # Reversed time (data -> noise, as diffusion samplers run) and another time range.
    sigma = 80.0 * (1 - times)
    assert straightness(trajectory, sigma) == pytest.approx(0.0, abs=1e-20)


def test_straightness_of_an_arc_matches_its_closed_form():
    # Unit quarter circle at constant angular speed: |v| = pi/2, x_1 - x_0 = (-1, 1), so
    # S = int |v|^2 dt - |x_1 - x_0|^2 = pi^2/4 - 2; with T chords, |v_k| = 2 T sin(pi / (4 T)).
    steps = 50
    times = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    angle = math.pi / 2 * times
    trajectory = torch.stack([angle.cos(), angle.sin()], dim=-1)[:, None, :].repeat(1, 3, 1)
    expected = (2 * steps * math.sin(math.pi / (4 * steps))) ** 2 - 2
    assert straightness(trajectory, times) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(math.pi**2 / 4 - 2, rel=1e-3) and expected > 0.4


def test_straightness_penalises_varying_speed_and_checks_times():
    # A straight segment traversed at non-constant speed in t is not straight in Liu et al.'s sense.
    times = torch.linspace(0, 1, 11, dtype=torch.float64)
    trajectory = (times**2)[:, None, None] * torch.ones(1, 4, 2, dtype=torch.float64)
    assert straightness(trajectory, times) > 0
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        straightness(trajectory, torch.zeros(11))
    with pytest.raises(ValueError, match=r"one time per state, \[11\]. Got 5"):
        straightness(trajectory, times[:5])


def test_within_class_modes_scores_kept_sub_modes_and_evenness_by_hand():
    modes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    classes = torch.tensor([0, 0, 1, 1])
    # class 0: 3 samples on mode 0, 1 on mode 1; class 1: 4 on mode 2, and 1 labelled 1 but on mode 0 (bad)
    x = torch.tensor([[0.0, 0.0]] * 3 + [[1.0, 0.0]] + [[10.0, 0.0]] * 4 + [[0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    kept, evenness = within_class_modes(x, labels, modes, classes, std=0.1, share=0.5)
    # fair counts: class 0: 2 per mode (3 and 1 >= 1: both kept); class 1: 2.5 per mode (4 kept, 0 not)
    assert kept == pytest.approx(3 / 4)
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert evenness == pytest.approx((h0 + 0.0) / 2)
