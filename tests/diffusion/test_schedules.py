"""Closed-form and autograd checks of `anydistill.diffusion.schedules`.

The prediction targets are written here from their definitions (x0, eps, v = alpha eps - sigma x0,
velocity = d_alpha x0 + d_sigma eps), independently of the library's 2x2 solve, and every
conversion is checked against them in float64 away from the singular endpoints.
"""

import math

import pytest
import torch

from anydistill.diffusion.schedules import (
    EDM,
    PREDICTION_KINDS,
    NoiseSchedule,
    RectifiedFlow,
    TrigFlow,
    VPCosine,
    expand_t,
)

SCHEDULES = [VPCosine(), EDM(), RectifiedFlow(), TrigFlow(sigma_d=0.5)]
IDS = [type(s).__name__ for s in SCHEDULES]
TOL = dict(rtol=1e-5, atol=1e-5)


def _interior_t(schedule: NoiseSchedule, n: int = 16, seed: int = 0) -> torch.Tensor:
    """Times in the middle 90% of the range, in float64 (log-uniform for EDM's [0.002, 80])."""
    g = torch.Generator().manual_seed(seed)
    u = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    if isinstance(schedule, EDM):
        lo, hi = math.log(schedule.t_min), math.log(schedule.t_max)
        return torch.exp(lo + (hi - lo) * u)
    return schedule.t_min + (schedule.t_max - schedule.t_min) * u


def _pair(schedule: NoiseSchedule, n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64) * 0.5
    eps = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64) * schedule.noise_std
    return x0, eps


def _targets(schedule: NoiseSchedule, x0, eps, t) -> dict[str, torch.Tensor]:
    def e(c):
        return c.reshape(-1, 1, 1, 1)

    a, s = schedule.alpha(t), schedule.sigma(t)
    return {
        "x0": x0,
        "eps": eps,
        "v": e(a) * eps - e(s) * x0,
        "velocity": e(schedule.d_alpha(t)) * x0 + e(schedule.d_sigma(t)) * eps,
    }


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_every_conversion_round_trips(schedule):
    t = _interior_t(schedule)
    x0, eps = _pair(schedule)
    x_t = schedule.add_noise(x0, eps, t)
    a, s = schedule.alpha(t).reshape(-1, 1, 1, 1), schedule.sigma(t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a * x0 + s * eps)
    targets = _targets(schedule, x0, eps, t)
    for from_kind in PREDICTION_KINDS:
        out = targets[from_kind]
        torch.testing.assert_close(schedule.to_x0(out, x_t, t, from_kind), x0, **TOL)
        torch.testing.assert_close(schedule.to_eps(out, x_t, t, from_kind), eps, **TOL)
        for to_kind in PREDICTION_KINDS:
            converted = schedule.convert(out, x_t, t, from_kind, to_kind)
            torch.testing.assert_close(converted, targets[to_kind], **TOL)
            # and back again
            back = schedule.convert(converted, x_t, t, to_kind, from_kind)
            torch.testing.assert_close(back, out, **TOL)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_derivatives_match_autograd(schedule):
    t = _interior_t(schedule).requires_grad_(True)
    for value, derivative in ((schedule.alpha, schedule.d_alpha), (schedule.sigma, schedule.d_sigma)):
        y = value(t)
        # A constant (EDM's alpha = 1) is built without a graph: its derivative is 0.
        (grad,) = torch.autograd.grad(y.sum(), t) if y.requires_grad else (torch.zeros_like(t),)
        torch.testing.assert_close(derivative(t.detach()), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_velocity_is_the_time_derivative_of_the_path(schedule):
    t = _interior_t(schedule)
    x0, eps = _pair(schedule)
    h = 1e-6 * (schedule.t_max - schedule.t_min)
    finite_difference = (schedule.add_noise(x0, eps, t + h) - schedule.add_noise(x0, eps, t - h)) / (2 * h)
    x_t = schedule.add_noise(x0, eps, t)
    for kind, out in (("x0", x0), ("eps", eps)):
        velocity = schedule.convert(out, x_t, t, kind, "velocity")
        torch.testing.assert_close(velocity, finite_difference, rtol=1e-6, atol=1e-6)


def test_boundary_values():
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    rf = RectifiedFlow()
    assert rf.alpha(zero).item() == 1 and rf.sigma(zero).item() == 0
    assert rf.alpha(one).item() == 0 and rf.sigma(one).item() == 1

    vp = VPCosine()
    assert vp.alpha(zero).item() == pytest.approx(1, abs=1e-15)
    assert vp.sigma(zero).item() == 0
    assert vp.alpha(one).item() == pytest.approx(0, abs=1e-15)
    assert vp.sigma(one).item() == pytest.approx(1, abs=1e-15)

    trig = TrigFlow()
    half_pi = torch.full((1,), math.pi / 2, dtype=torch.float64)
    assert trig.alpha(zero).item() == 1 and trig.sigma(zero).item() == 0
    assert trig.alpha(half_pi).item() == pytest.approx(0, abs=1e-15)
    assert trig.sigma(half_pi).item() == 1

    edm = EDM()
    t = torch.tensor([edm.t_min, edm.t_max], dtype=torch.float64)
    torch.testing.assert_close(edm.sigma(t), t)
    assert torch.equal(edm.alpha(t), torch.ones_like(t))


@pytest.mark.parametrize("schedule", [VPCosine(), VPCosine(s=0.0), TrigFlow(sigma_d=1.3)], ids=str)
def test_variance_preserving_paths(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 101, dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t))


def test_vp_cosine_matches_the_improved_ddpm_alpha_bar():
    s = 0.008
    t = torch.linspace(0, 1, 11, dtype=torch.float64)

    def f(u):
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    alpha_bar = f(t) / f(torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(VPCosine(s).alpha(t) ** 2, alpha_bar)
    torch.testing.assert_close(VPCosine(s).sigma(t) ** 2, 1 - alpha_bar)


def test_trigflow_v_is_its_velocity():
    schedule = TrigFlow(sigma_d=0.5)
    t = _interior_t(schedule)
    x0, z = _pair(schedule)
    x_t = schedule.add_noise(x0, z, t)
    torch.testing.assert_close(
        schedule.convert(z, x_t, t, "eps", "v"), schedule.convert(z, x_t, t, "eps", "velocity")
    )
    # the consistency function of Lu & Song: f = cos t x_t - sin t * velocity
    velocity = schedule.convert(x0, x_t, t, "x0", "velocity")
    f = torch.cos(t).reshape(-1, 1, 1, 1) * x_t - torch.sin(t).reshape(-1, 1, 1, 1) * velocity
    torch.testing.assert_close(f, x0)


def test_rectified_flow_velocity_is_eps_minus_x0():
    schedule = RectifiedFlow()
    t = _interior_t(schedule)
    x0, eps = _pair(schedule)
    x_t = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(schedule.convert(eps, x_t, t, "eps", "velocity"), eps - x0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_snr_and_edm_sigma(schedule):
    t = _interior_t(schedule).sort().values
    snr = schedule.snr(t)
    torch.testing.assert_close(snr, schedule.alpha(t) ** 2 / schedule.sigma(t) ** 2)
    torch.testing.assert_close(schedule.log_snr(t), torch.log(snr))
    assert bool((snr[1:] < snr[:-1]).all()), "SNR decreases from data to noise"
    edm_sigma = schedule.edm_sigma(t)
    torch.testing.assert_close(edm_sigma, schedule.noise_std * schedule.sigma(t) / schedule.alpha(t))
    torch.testing.assert_close(schedule.t_from_edm_sigma(edm_sigma), t, rtol=1e-10, atol=1e-12)


def test_edm_noise_level_is_t_and_preconditioning():
    edm = EDM(sigma_data=0.5)
    sigma = _interior_t(edm)
    torch.testing.assert_close(edm.edm_sigma(sigma), sigma)
    c_skip, c_out, c_in = edm.c_skip(sigma), edm.c_out(sigma), edm.c_in(sigma)
    sd = edm.sigma_data
    # Unit-variance network input and training target (EDM, Appendix B.6), for data of std sigma_d.
    torch.testing.assert_close(c_in**2 * (sigma**2 + sd**2), torch.ones_like(sigma))
    target_variance = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_variance, torch.ones_like(sigma))
    torch.testing.assert_close(edm.c_noise(sigma), torch.log(sigma) / 4)
    tiny = torch.tensor([1e-9], dtype=torch.float64)
    assert edm.c_skip(tiny).item() == pytest.approx(1)
    assert edm.c_out(tiny).item() == pytest.approx(0, abs=1e-8)


def test_trigflow_noise_has_std_sigma_d_and_edm_sigma_is_sigma_d_tan_t():
    schedule = TrigFlow(sigma_d=0.5)
    noise = schedule.sample_noise(torch.empty(20000, 8), torch.Generator().manual_seed(0))
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)
    t = _interior_t(schedule)
    torch.testing.assert_close(schedule.edm_sigma(t), 0.5 * torch.tan(t))
    assert VPCosine().sample_noise(torch.empty(20000, 8), torch.Generator().manual_seed(0)).std().item() == (
        pytest.approx(1.0, rel=0.02)
    )


def test_expand_t_broadcasts_over_data_dims():
    t = torch.arange(4.0, dtype=torch.float64)
    x = torch.zeros(4, 3, 5, dtype=torch.float32)
    out = expand_t(t, x)
    assert out.shape == (4, 1, 1) and out.dtype == torch.float32
    assert expand_t(t, torch.zeros(4)).shape == (4,)
    assert expand_t(torch.tensor(0.5), x).shape == ()
    with pytest.raises(ValueError, match=r"shape \[B\].*Got t of shape \(3,\) for data of shape \(4, 3, 5\)"):
        expand_t(torch.zeros(3), x)
    with pytest.raises(ValueError, match="shape"):
        expand_t(torch.zeros(4, 1), x)


def test_data_dtype_is_kept():
    schedule = RectifiedFlow()
    t = torch.full((2,), 0.3, dtype=torch.float64)
    x0 = torch.randn(2, 3, dtype=torch.float32)
    x_t = schedule.add_noise(x0, x0, t)
    assert x_t.dtype == torch.float32
    assert schedule.convert(x0, x_t, t, "x0", "velocity").dtype == torch.float32


def test_unknown_kinds_are_reported_together_with_a_suggestion():
    schedule, x, t = RectifiedFlow(), torch.zeros(2, 3), torch.full((2,), 0.5)
    with pytest.raises(ValueError) as info:
        schedule.convert(x, x, t, "velocty", "flow")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "'from_kind' argument of convert" in lines[0] and "did you mean 'velocity'" in lines[0]
    assert "'to_kind'" in lines[1] and "Got 'flow'" in lines[1]
    with pytest.raises(ValueError, match="'kind' argument of to_x0 .*did you mean 'eps'"):
        schedule.to_x0(x, x, t, "epsilon")


def test_invalid_hyperparameters_are_reported_together():
    with pytest.raises(ValueError) as info:
        EDM(sigma_min=-1.0, sigma_max=0.0, sigma_data=0.0)
    assert len(str(info.value).splitlines()) == 2  # sigma_min and sigma_data (0 > -1 is a valid max)
    with pytest.raises(ValueError, match="sigma_max.*> sigma_min"):
        EDM(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="'sigma_d' parameter of TrigFlow"):
        TrigFlow(sigma_d=0)
    with pytest.raises(ValueError, match="'s' parameter of VPCosine"):
        VPCosine(s=-0.1)


def test_vp_cosine_alpha_is_exactly_zero_at_t_max_in_fp32() -> None:
    """cos(pi/2) rounds to -4.4e-8 in fp32; clamped, pure noise has alpha 0 and a positive alpha never flips sign."""
    schedule = VPCosine()
    t = torch.tensor([1.0, 1.0 - 1e-7, 0.5], dtype=torch.float32)
    alpha = schedule.alpha(t)
    assert alpha[0].item() == 0.0 and (alpha >= 0).all()
    k = math.pi / (2 * 1.008)
    assert schedule.alpha(t.double())[2].item() == pytest.approx(math.cos((0.5 + 0.008) * k) / math.cos(0.008 * k), rel=1e-12)


def test_an_eps_model_at_pure_noise_is_refused_in_one_line() -> None:
    from anydistill.catalog import load_recipe
    from anydistill.core.errors import RecipeError

    recipe = {"name": "eps", "data": {"name": "toy2d", "num_train": 256},
              "teacher": {"name": "mlp-denoiser", "schedule": "vp-cosine", "prediction": "eps", "hidden": 16, "depth": 1},
              "student": {"name": "mlp-denoiser", "schedule": "vp-cosine", "prediction": "eps", "hidden": 16, "depth": 1},
              "trainer": {"max_epochs": 20}, "methods": {"progressive": {}}}
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe)
    assert len(error.value.problems) == 2 and "teacher: an eps-prediction model on the vp-cosine schedule gives no x0 at t_max" in error.value.problems[0]
    recipe["teacher"]["prediction"] = recipe["student"]["prediction"] = "v"
    assert load_recipe(recipe).methods
