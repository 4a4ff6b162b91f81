"""Shapes, ranges, determinism and distributions of `anydistill.diffusion.timesteps`."""

import math

import pytest
import torch

from anydistill.diffusion.schedules import EDM, RectifiedFlow, TrigFlow, VPCosine
from anydistill.diffusion.timesteps import (
    DiscreteTime,
    LogitNormalTime,
    LogNormalTime,
    UniformTime,
    UShapedTime,
)

SCHEDULES = [VPCosine(), EDM(), RectifiedFlow(), TrigFlow()]
SAMPLERS = [UniformTime(), LogNormalTime(), LogitNormalTime(), UShapedTime(), DiscreteTime([0.5, 1.0])]
N = 200_000


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_shape_range_dtype_and_determinism(sampler, schedule):
    t = sampler.sample(1000, schedule, generator=_g(0))
    assert t.shape == (1000,) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert schedule.t_min <= t.min().item() and t.max().item() <= schedule.t_max + 1e-6
    assert torch.equal(t, sampler.sample(1000, schedule, generator=_g(0)))
    assert not torch.equal(t, sampler.sample(1000, schedule, generator=_g(1)))
    t64 = sampler.sample(7, schedule, generator=_g(0), dtype=torch.float64, device="cpu")
    assert t64.dtype == torch.float64 and t64.shape == (7,)
    assert sampler.sample(0, schedule, generator=_g(0)).shape == (0,)


def test_uniform_moments_and_sub_range():
    t = UniformTime().sample(N, EDM(), generator=_g(), dtype=torch.float64)
    assert t.mean().item() == pytest.approx((0.002 + 80) / 2, rel=0.01)
    t = UniformTime(low=0.02, high=0.98).sample(N, RectifiedFlow(), generator=_g(), dtype=torch.float64)
    assert 0.02 <= t.min().item() and t.max().item() <= 0.98
    assert t.var().item() == pytest.approx(0.96**2 / 12, rel=0.02)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_log_normal_is_log_normal_in_the_edm_noise_level(schedule):
    t = LogNormalTime(p_mean=-1.2, p_std=1.2).sample(N, schedule, generator=_g(), dtype=torch.float64)
    log_sigma = torch.log(schedule.edm_sigma(t))
    # VPCosine's t_max = 1 is infinite noise; clamping there moves no mass, as for the others.
    log_sigma = log_sigma[torch.isfinite(log_sigma)]
    assert log_sigma.numel() > 0.999 * N
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)


def test_log_normal_maps_to_the_papers_times():
    normal = torch.randn(N, generator=_g(), dtype=torch.float64)
    sigma = torch.exp(-1.0 + 1.4 * normal)
    trig = LogNormalTime(p_mean=-1.0, p_std=1.4).sample(N, TrigFlow(0.5), generator=_g(), dtype=torch.float64)
    torch.testing.assert_close(trig, torch.atan(sigma / 0.5))  # sCM: t = arctan(e^tau / sigma_d)
    rf = LogNormalTime(p_mean=-1.0, p_std=1.4).sample(N, RectifiedFlow(), generator=_g(), dtype=torch.float64)
    torch.testing.assert_close(rf, sigma / (1 + sigma))
    edm = LogNormalTime().sample(N, EDM(), generator=_g(), dtype=torch.float64)
    assert edm.median().item() == pytest.approx(math.exp(-1.2), rel=0.02)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.5, 1.0), (-1.0, 0.5)])
def test_logit_normal_median_is_sigmoid_of_mean(mean, std):
    t = LogitNormalTime(mean=mean, std=std).sample(N, RectifiedFlow(), generator=_g(), dtype=torch.float64)
    sig = 1 / (1 + math.exp(-mean))
    assert t.median().item() == pytest.approx(sig, abs=0.005)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(mean, abs=0.01)
    assert logit.std().item() == pytest.approx(std, rel=0.01)


def test_logit_normal_is_rescaled_to_the_schedule_range():
    t = LogitNormalTime(mean=0.5).sample(N, TrigFlow(), generator=_g(), dtype=torch.float64)
    assert t.median().item() == pytest.approx(math.pi / 2 / (1 + math.exp(-0.5)), abs=0.01)


def _u_shaped_bin_probabilities(a: float, edges: torch.Tensor) -> torch.Tensor:
    """Bin masses of p(u) ∝ exp(a u) + exp(a (1 - u)), integrated in closed form from the density
    as written in RF++ (not from the sampler's CDF)."""

    def antiderivative(u):
        return (torch.exp(a * u) - torch.exp(a * (1 - u))) / a

    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    total = antiderivative(one) - antiderivative(zero)
    return (antiderivative(edges[1:]) - antiderivative(edges[:-1])) / total


@pytest.mark.parametrize("a", [4.0, 1.0, 10.0])
def test_u_shaped_histogram_matches_its_density(a):
    t = UShapedTime(a=a).sample(N, RectifiedFlow(), generator=_g(), dtype=torch.float64)
    edges = torch.linspace(0, 1, 21, dtype=torch.float64)
    observed = torch.histc(t, bins=20, min=0, max=1) / N
    expected = _u_shaped_bin_probabilities(a, edges)
    # One bin's standard error is at most sqrt(0.25 / 200k) ~ 1e-3.
    torch.testing.assert_close(observed, expected, rtol=0, atol=5e-3)
    # U-shaped: the end bins hold cosh(a/2)-ish times more than the middle ones.
    assert observed[0] > observed[9] and observed[-1] > observed[10]
    assert t.mean().item() == pytest.approx(0.5, abs=0.005)


def test_u_shaped_quantiles_are_exact():
    # Compare empirical and exact CDF at many points (a Kolmogorov-Smirnov-style bound).
    a = 4.0
    t = UShapedTime(a=a).sample(N, RectifiedFlow(), generator=_g(3), dtype=torch.float64).sort().values
    u = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    cdf = 0.5 + torch.sinh(a * (u - 0.5)) / (2 * math.sinh(a / 2))
    empirical = torch.searchsorted(t, u).double() / N
    assert (empirical - cdf).abs().max().item() < 0.005  # KS 99.9% bound at n=200k is ~0.0044


def test_u_shaped_is_rescaled_to_the_schedule_range():
    t = UShapedTime().sample(N, TrigFlow(), generator=_g(), dtype=torch.float64)
    assert t.mean().item() == pytest.approx(math.pi / 4, abs=0.01)
    assert 0 <= t.min().item() and t.max().item() <= math.pi / 2


def test_discrete_time_chooses_uniformly_from_its_list():
    steps = [0.999, 0.749, 0.499, 0.249]
    sampler = DiscreteTime(steps)
    t = sampler.sample(N, RectifiedFlow(), generator=_g(), dtype=torch.float64)
    values, counts = torch.unique(t, return_counts=True)
    torch.testing.assert_close(values, torch.tensor(sorted(steps), dtype=torch.float64))
    quarter = torch.full((4,), 0.25, dtype=torch.float64)
    torch.testing.assert_close(counts.double() / N, quarter, rtol=0, atol=0.005)
    index = sampler.sample_indices(10, generator=_g(5))
    assert index.dtype == torch.int64
    torch.testing.assert_close(
        torch.tensor(steps, dtype=torch.float64)[index],
        sampler.sample(10, RectifiedFlow(), generator=_g(5), dtype=torch.float64),
    )


def test_discrete_time_refuses_times_outside_the_schedule():
    with pytest.raises(ValueError, match=r"range \[0.0, 1.0\]. Got \[999.0\].*i / T"):
        DiscreteTime([999, 0.5]).sample(4, VPCosine(), generator=_g())
    with pytest.raises(ValueError, match="non-empty list"):
        DiscreteTime([])


def test_invalid_parameters_are_reported_together():
    with pytest.raises(ValueError) as info:
        LogNormalTime(p_mean=float("nan"), p_std=-1)
    assert len(str(info.value).splitlines()) == 2
    with pytest.raises(ValueError) as info:
        LogitNormalTime(mean="0", std=0)
    assert len(str(info.value).splitlines()) == 2
    with pytest.raises(ValueError, match="'a' parameter of UShapedTime must be a float > 0"):
        UShapedTime(a=0)
    with pytest.raises(ValueError, match="low < high"):
        UniformTime(low=0.5, high=0.5)
    with pytest.raises(ValueError) as info:
        UniformTime(low=-1.0).sample(-2, RectifiedFlow(), generator=_g())
    assert len(str(info.value).splitlines()) == 2  # both n and the range
