"""Checks of `anydistill.diffusion.samplers` against an analytic model, so nothing is trained.

The data are Gaussian, x0 ~ N(mu, s^2 I) in D dims, and the noise eps ~ N(0, n^2 I) with n the
schedule's `noise_std` (1, or sigma_d for TrigFlow). Then x_t = alpha x0 + sigma eps and x0 are
jointly Gaussian, per dimension:

    E[x_t] = alpha mu,   Var(x_t) = v_t := alpha^2 s^2 + sigma^2 n^2,   Cov(x0, x_t) = alpha s^2,

so the exact denoiser (posterior mean, the best x0 prediction) is

    x0_hat(x_t, t) = mu + (alpha s^2 / v_t) (x_t - alpha mu).

Its velocity u = d_alpha x0_hat + d_sigma (x_t - alpha x0_hat) / sigma simplifies, with
y = x_t - alpha mu, to u = d_alpha mu + y (alpha d_alpha s^2 + sigma d_sigma n^2) / v_t
= d_alpha mu + y (d v_t / dt) / (2 v_t), so the probability-flow ODE dy/dt = y d(log sqrt v_t)/dt
has the exact solution

    x_t = alpha_t mu + sqrt(v_t / v_T) (x_T - alpha_T mu)          (the "flow map" T -> t),

which is the limit of any convergent ODE sampler and the reference of the convergence tests (a
400-step Heun run is checked against it). The flow map to clean data (t = 0: alpha = 1, sigma = 0)
is the exact consistency function f(x_t, t) = mu + s (x_t - alpha_t mu) / sqrt(v_t).
"""

import math

import pytest
import torch

from anydistill.diffusion.samplers import (
    DDIMSampler,
    EulerSampler,
    HeunSampler,
    MultistepSampler,
    OneStepSampler,
    StochasticSampler,
    sample,
    time_grid,
)
from anydistill.diffusion.schedules import EDM, NoiseSchedule, RectifiedFlow, TrigFlow, VPCosine

D = 4
MU = torch.linspace(-1.0, 1.0, D, dtype=torch.float64)
S = 0.5

SCHEDULES = [RectifiedFlow(), VPCosine(), EDM(), TrigFlow(sigma_d=0.5)]
IDS = [type(s).__name__ for s in SCHEDULES]


def _spacing(schedule: NoiseSchedule) -> str:
    # uniform steps in sigma on EDM's [0.002, 80] leave no steps at low noise
    return "karras" if isinstance(schedule, EDM) else "uniform"


def _kinds(schedule: NoiseSchedule) -> list[str]:
    # eps cannot give x0 where alpha(t_max) = 0 (RF, VP, TrigFlow at t_max)
    return ["x0", "eps", "v", "velocity"] if isinstance(schedule, EDM) else ["x0", "v", "velocity"]


def _v(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    return schedule.alpha(t) ** 2 * S**2 + schedule.sigma(t) ** 2 * schedule.noise_std**2


def denoiser(schedule: NoiseSchedule, kind: str = "x0"):
    """The exact E[x0 | x_t] (module docstring), re-expressed as a prediction of ``kind``."""

    def model_fn(x_t, t):
        a = schedule.alpha(t).reshape(-1, 1)
        x0_hat = MU + a * S**2 / _v(schedule, t).reshape(-1, 1) * (x_t - a * MU)
        return schedule.convert(x0_hat, x_t, t, "x0", kind)

    return model_fn


def consistency_fn(schedule: NoiseSchedule):
    """The exact flow map from (x_t, t) to clean data, as an x0 prediction."""

    def model_fn(x_t, t):
        a = schedule.alpha(t).reshape(-1, 1)
        return MU + S * (x_t - a * MU) / torch.sqrt(_v(schedule, t)).reshape(-1, 1)

    return model_fn


def exact_flow(schedule: NoiseSchedule, x_T, t_T: float, t: float):
    """The exact probability-flow ODE solution from (x_T, t_T) to time t."""
    t_T_, t_ = torch.tensor(t_T, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    ratio = torch.sqrt(_v(schedule, t_) / _v(schedule, t_T_))
    return schedule.alpha(t_) * MU + ratio * (x_T - schedule.alpha(t_T_) * MU)


def noise(schedule: NoiseSchedule, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return schedule.sample_noise(torch.zeros(n, D, dtype=torch.float64), g)


def assert_data_statistics(x, tol=0.03):
    mean_error = (x.mean(0) - MU).abs().max().item()
    std = (x - MU).std().item()
    assert torch.isfinite(x).all()
    assert mean_error < tol, f"per-dim mean off by {mean_error:.4f}"
    assert abs(std - S) < tol, f"std {std:.4f}, expected {S}"


# ----------------------------------------------------------------------------------------------
# (1) grids, shapes, determinism


def _factories(schedule):
    sp = _spacing(schedule)
    return {
        "ddim": (lambda: DDIMSampler(schedule, spacing=sp), lambda n: n),
        "ddim_eta1": (lambda: DDIMSampler(schedule, eta=1.0, spacing=sp), lambda n: n),
        "euler": (lambda: EulerSampler(schedule, spacing=sp), lambda n: n),
        "heun": (lambda: HeunSampler(schedule, spacing=sp), lambda n: 2 * n - 1),
        "stochastic": (lambda: StochasticSampler(schedule, s_churn=10.0, spacing=sp), lambda n: n),
        "one_step": (lambda: OneStepSampler(schedule), lambda n: 1),
        "multistep": (
            lambda: MultistepSampler(
                schedule, time_grid(schedule, 5, spacing=sp)[:-1].tolist()
            ),
            lambda n: 5,
        ),
    }


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_timesteps_shapes_and_trajectory(schedule):
    for name, (make, nfe_of) in _factories(schedule).items():
        num_steps = {"one_step": 1, "multistep": 5}.get(name, 7)
        sampler = make()
        sampler.set_timesteps(num_steps)
        ts = sampler.timesteps
        assert ts.shape == (nfe_of(num_steps),), name
        assert ts.dtype == torch.float64
        assert (ts[1:] <= ts[:-1]).all(), f"{name}: timesteps must not increase"
        assert ts[0] == schedule.t_max, name
        assert (ts >= schedule.t_min).all() and (ts <= schedule.t_max).all(), name
        if name not in ("multistep",):
            assert (ts > schedule.t_min).all(), f"{name} evaluates the model at t_min"
        if name in ("ddim", "euler"):
            assert (ts[1:] < ts[:-1]).all()

        seen = []

        def model_fn(x, t, seen=seen):
            assert t.shape == (x.shape[0],) and t.dtype == x.dtype
            seen.append(t[0].item())
            return denoiser(schedule)(x, t)

        z = noise(schedule, 8)
        g = torch.Generator().manual_seed(1)
        out = sample(model_fn, make(), z, num_steps, kind="x0", generator=g, return_trajectory=True)
        assert out.x0.shape == z.shape and out.x0.dtype == z.dtype
        assert out.nfe == len(ts) == len(seen)
        torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64), ts)
        assert len(out.trajectory) == out.nfe + 1
        assert out.trajectory[-1] is out.x0
        torch.testing.assert_close(out.trajectory[0], sampler.init_noise_sigma * z)
        assert torch.isfinite(out.x0).all()


def test_float32_data_get_float32_results_computed_with_float64_times():
    edm = EDM()
    z = noise(edm, 64)
    model64 = denoiser(edm)

    def model32(x, t):  # the analytic model, evaluated like a float32 network would be
        assert x.dtype == t.dtype == torch.float32
        return model64(x.double(), t.double()).float()

    for sampler in (HeunSampler(edm, spacing="karras"), DDIMSampler(edm, spacing="karras")):
        x32 = sample(model32, sampler, z.float(), 30, kind="x0").x0
        x64 = sample(model64, sampler, z, 30, kind="x0").x0
        assert x32.dtype == torch.float32
        torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)
    # (torch draws different float32 and float64 normals from one seed: no comparison here)
    g = torch.Generator().manual_seed(0)
    stochastic = StochasticSampler(edm, spacing="karras")
    x32 = sample(model32, stochastic, z.float(), 30, kind="x0", generator=g).x0
    assert x32.dtype == torch.float32 and torch.isfinite(x32).all()


def test_time_grid_spacings():
    rf = RectifiedFlow()
    torch.testing.assert_close(
        time_grid(rf, 4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        time_grid(rf, 2, t_start=0.8), torch.tensor([0.8, 0.4, 0.0], dtype=torch.float64)
    )
    # EDM eq. 5 with its N_edm = N + 1 noise levels from sigma_max to sigma_min (EDM then appends
    # sigma = 0, which lies outside the EDM schedule's range)
    edm, n, rho = EDM(), 17, 7.0
    i = torch.arange(n + 1, dtype=torch.float64)
    lo, hi = edm.sigma_min ** (1 / rho), edm.sigma_max ** (1 / rho)
    expected = (hi + i / n * (lo - hi)) ** rho
    torch.testing.assert_close(time_grid(edm, n, spacing="karras"), expected, rtol=1e-12, atol=0)
    # karras crowds the steps at the data end
    grid = time_grid(rf, 10, spacing="karras")
    assert (grid[-2] - grid[-1]) < (grid[0] - grid[1]) / 100


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_determinism_under_a_generator():
    rf = RectifiedFlow()
    z = noise(rf, 16)
    for make in (
        lambda: DDIMSampler(rf, eta=1.0),
        lambda: StochasticSampler(rf, s_churn=20.0),
        lambda: MultistepSampler(rf, [1.0, 0.6, 0.3]),
    ):
        steps = 3 if isinstance(make(), MultistepSampler) else 10
        runs = [
            sample(denoiser(rf), make(), z, steps, kind="x0", generator=_gen(seed)).x0
            for seed in (5, 5, 6)
        ]
        torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
        assert (runs[0] - runs[2]).abs().max() > 1e-3
    # the deterministic samplers ignore the generator
    a = sample(denoiser(rf), HeunSampler(rf), z, 5, kind="x0", generator=_gen(1)).x0
    b = sample(denoiser(rf), HeunSampler(rf), z, 5, kind="x0").x0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# (2) ODE samplers reproduce the data distribution


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_ode_samplers_match_the_data_statistics(schedule):
    z = noise(schedule, 8000)
    sp = _spacing(schedule)
    for sampler, steps in (
        (EulerSampler(schedule, spacing=sp), 200),
        (HeunSampler(schedule, spacing=sp), 50),
        (DDIMSampler(schedule, spacing=sp), 100),
    ):
        for kind in _kinds(schedule):
            x = sample(denoiser(schedule, kind), sampler, z, steps, kind=kind).x0
            assert_data_statistics(x)


def test_eps_prediction_starts_below_a_singular_t_max():
    # at RF's t_max alpha = 0 and an eps prediction does not determine x0 ...
    rf = RectifiedFlow()
    bad = sample(denoiser(rf, "eps"), EulerSampler(rf), noise(rf, 8), 20, kind="eps").x0
    assert not torch.isfinite(bad).all()
    # ... one discrete step below it, it does (the start then drops alpha x0: 0.1% of the std)
    for schedule in (rf, VPCosine()):
        z = noise(schedule, 8000)
        heun = HeunSampler(schedule, t_start=0.999)
        x = sample(denoiser(schedule, "eps"), heun, z, 50, kind="eps").x0
        assert_data_statistics(x)


# ----------------------------------------------------------------------------------------------
# (3) convergence order


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_convergence_order_euler_1_heun_2(schedule):
    z = noise(schedule, 64, seed=3)
    sp = _spacing(schedule)
    x_T = schedule.sigma(torch.tensor(schedule.t_max, dtype=torch.float64)) * z
    reference = exact_flow(schedule, x_T, schedule.t_max, schedule.t_min)
    # the closed form is what a very fine solver converges to
    heun = HeunSampler(schedule, spacing=sp)
    fine = sample(denoiser(schedule, "velocity"), heun, z, 400, kind="velocity").x0
    torch.testing.assert_close(fine, reference, rtol=0, atol=2e-4)

    def errors(make, steps):
        model = denoiser(schedule, "x0")
        return [
            (sample(model, make(), z, n, kind="x0").x0 - reference).abs().max().item()
            for n in steps
        ]

    euler = errors(lambda: EulerSampler(schedule, spacing=sp), [40, 80, 160])
    heun = errors(lambda: HeunSampler(schedule, spacing=sp), [20, 40, 80])
    for a, b in zip(euler, euler[1:]):
        assert 1.6 < a / b < 2.5, f"Euler error ratio {a / b:.2f} for {euler}"
    for a, b in zip(heun, heun[1:]):
        assert 3.0 < a / b < 5.0, f"Heun error ratio {a / b:.2f} for {heun}"


# ----------------------------------------------------------------------------------------------
# (4) DDIM (eta = 0) and Euler


def _imperfect(schedule):
    """A deliberately wrong, nonlinear x0 model: DDIM = Euler there does not need exactness."""
    exact = denoiser(schedule)

    def model_fn(x, t):
        return exact(x, t) + 0.3 * torch.tanh(x) * t.reshape(-1, 1)

    return model_fn


@pytest.mark.parametrize("schedule", [RectifiedFlow(), EDM()], ids=["RectifiedFlow", "EDM"])
def test_ddim_equals_euler_where_alpha_and_sigma_are_affine(schedule):
    # x_t + (s - t)(d_alpha x0 + d_sigma eps) = alpha_s x0 + sigma_s eps when alpha, sigma are
    # affine in t (RF: 1 - t, t; EDM: 1, t): the two are the same map, for any prediction.
    z = noise(schedule, 32)
    sp = _spacing(schedule)
    for kind in ("x0", "velocity"):
        model = _imperfect(schedule)

        def as_kind(x, t, model=model, kind=kind):
            return schedule.convert(model(x, t), x, t, "x0", kind)

        ddim, euler = (
            sample(as_kind, make(schedule, spacing=sp), z, 12, kind=kind, return_trajectory=True)
            for make in (DDIMSampler, EulerSampler)
        )
        for a, b in zip(ddim.trajectory, euler.trajectory):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule", [VPCosine(), TrigFlow()], ids=["VPCosine", "TrigFlow"])
def test_ddim_and_euler_differ_on_curved_schedules_but_agree_in_the_limit(schedule):
    # there DDIM is Euler's method in (x / alpha, sigma / alpha), not in (x, t): another
    # first-order scheme, with its own error constant
    z = noise(schedule, 32)
    model = denoiser(schedule)
    x_T = schedule.sigma(torch.tensor(schedule.t_max)) * z
    reference = exact_flow(schedule, x_T, schedule.t_max, 0.0)
    coarse = [sample(model, s(schedule), z, 10, kind="x0").x0 for s in (DDIMSampler, EulerSampler)]
    assert (coarse[0] - coarse[1]).abs().max() > 0.1
    for sampler in (DDIMSampler, EulerSampler):
        errors = [
            (sample(model, sampler(schedule), z, n, kind="x0").x0 - reference).abs().max().item()
            for n in (100, 200)
        ]
        assert errors[1] < 0.02 and 1.6 < errors[0] / errors[1] < 2.5, errors


# ----------------------------------------------------------------------------------------------
# (5) one step


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_one_step_returns_the_posterior_mean_of_the_noise(schedule):
    z = noise(schedule, 32)
    t = torch.tensor(schedule.t_max, dtype=torch.float64)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    # x_T = sigma_T z, so x0_hat = mu + c (sigma_T z - alpha_T mu), c = alpha_T s^2 / v_T: exactly
    # mu where alpha(t_max) = 0 (RF, VP, TrigFlow), mu + 0.003 (80 z - mu) for EDM
    c = alpha * S**2 / _v(schedule, t)
    expected = MU + c * (sigma * z - alpha * MU)
    for kind in _kinds(schedule):
        out = sample(denoiser(schedule, kind), OneStepSampler(schedule), z, 1, kind=kind)
        assert out.nfe == 1
        torch.testing.assert_close(out.x0, expected, rtol=1e-9, atol=1e-9)
    # the exact consistency function turns the same step into an exact sample
    out = sample(consistency_fn(schedule), OneStepSampler(schedule), z, 1, kind="x0")
    expected = exact_flow(schedule, sigma * z, schedule.t_max, 0.0)
    torch.testing.assert_close(out.x0, expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# (6) multistep and stochastic samplers


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_multistep_sampler(schedule):
    z = noise(schedule, 8000)
    taus = time_grid(schedule, 4, spacing=_spacing(schedule))[:-1].tolist()  # K = 4, from t_max
    g = torch.Generator().manual_seed(2)
    # with the exact consistency function every K gives the data distribution
    for k in (1, 2, 4):
        sampler = MultistepSampler(schedule, taus[:k])
        x = sample(consistency_fn(schedule), sampler, z, k, kind="x0", generator=g).x0
        assert_data_statistics(x)
    # with the denoiser the mean is right and the spread follows the posterior-mean recursion:
    # x_{tau_k} = alpha_k x_hat_{k-1} + sigma_k eps;  x_hat_k = mu + c_k (x_{tau_k} - alpha_k mu)
    sampler = MultistepSampler(schedule, taus)
    x = sample(denoiser(schedule), sampler, z, 4, kind="x0", generator=g).x0
    # (mean and variance of x_hat_k - mu, per dimension)
    for k, tau in enumerate(taus):
        tau = torch.tensor(tau, dtype=torch.float64)
        alpha, sigma = schedule.alpha(tau), schedule.sigma(tau)
        c = alpha * S**2 / _v(schedule, tau)
        noise_var = (sigma * schedule.noise_std) ** 2
        if k == 0:  # the start is sigma_0 z, without alpha_0 x0
            mean, var = -c * alpha * MU, c**2 * noise_var
        else:
            mean, var = c * alpha * mean, c**2 * (alpha**2 * var + noise_var)
    assert ((x.mean(0) - MU) - mean).abs().max() < 0.03
    assert abs((x - MU).std().item() - math.sqrt(var)) < 0.02
    assert (x - MU).std().item() < 0.9 * S  # shrunk: the denoiser is not a consistency function


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_stochastic_samplers_match_the_data_statistics(schedule):
    z = noise(schedule, 8000)
    sp = _spacing(schedule)
    g = torch.Generator().manual_seed(4)
    # first order with a larger error constant than the ODE samplers (the std is 0.47 after
    # 100 steps on EDM), hence 400 steps
    for sampler, kind in (
        (StochasticSampler(schedule, s_churn=40.0, spacing=sp), "velocity"),
        (DDIMSampler(schedule, eta=1.0, spacing=sp), "x0"),
    ):
        x = sample(denoiser(schedule, kind), sampler, z, 400, kind=kind, generator=g).x0
        assert_data_statistics(x)


def test_stochastic_sampler_grid():
    edm = EDM()
    s = StochasticSampler(edm, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, spacing="karras")
    s.set_timesteps(18)
    grid = time_grid(edm, 18, spacing="karras")
    ts = s.timesteps
    assert ts[0] == grid[0]
    gamma = min(40.0 / 18, math.sqrt(2) - 1)
    for i in range(1, 18):
        level = float(grid[i])
        if 0.05 <= level <= 50:
            # EDM: t_hat = (1 + gamma) t, capped at the previous grid time
            assert float(ts[i]) == pytest.approx(min((1 + gamma) * level, float(grid[i - 1])))
        else:
            assert ts[i] == grid[i]
    # without churn it is the Euler sampler
    z = noise(edm, 16)
    no_churn = StochasticSampler(edm, s_churn=0.0, spacing="karras")
    a = sample(denoiser(edm), no_churn, z, 20, kind="x0").x0
    b = sample(denoiser(edm), EulerSampler(edm, spacing="karras"), z, 20, kind="x0").x0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_heun_state_machine():
    rf = RectifiedFlow()
    h = HeunSampler(rf)
    h.set_timesteps(4)
    torch.testing.assert_close(
        h.timesteps, torch.tensor([1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25], dtype=torch.float64)
    )
    z = noise(rf, 8)
    x, model, roles = z, denoiser(rf), []
    for t in h.timesteps:
        roles.append(h.state_in_first_order)
        x = h.step(model(x, t.expand(8)), t, x, kind="x0")
    assert roles == [True, False, True, False, True, False, True]
    # one step: Euler alone, NFE 1
    a = sample(model, HeunSampler(rf), z, 1, kind="x0")
    b = sample(model, EulerSampler(rf), z, 1, kind="x0")
    assert a.nfe == 1
    torch.testing.assert_close(a.x0, b.x0, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_problem_and_the_fix():
    rf = RectifiedFlow()
    x = torch.zeros(2, D)
    with pytest.raises(ValueError, match="set_timesteps"):
        EulerSampler(rf).step(x, 1.0, x, kind="x0")
    e = EulerSampler(rf)
    e.set_timesteps(2)
    with pytest.raises(ValueError, match=r"expected t = 1.*got t = 0.5"):
        e.step(x, 0.5, x, kind="x0")
    with pytest.raises(ValueError, match="did you mean 'eps'"):
        e.step(x, 1.0, x, kind="epsilon")
    e.step(x, torch.ones(2), x, kind="x0")
    e.step(x, torch.tensor(0.5), x, kind="x0")
    with pytest.raises(ValueError, match="Call set_timesteps again"):
        e.step(x, 0.0, x, kind="x0")
    # every problem at once
    with pytest.raises(ValueError) as info:
        DDIMSampler(rf, eta=1.5, spacing="karas", rho=0)
    message = str(info.value)
    assert "'eta'" in message and "did you mean 'karras'" in message and "'rho'" in message
    with pytest.raises(ValueError, match="t_start"):
        HeunSampler(rf, t_start=1.5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        MultistepSampler(rf, [0.5, 0.9])
    with pytest.raises(ValueError, match="range"):
        MultistepSampler(EDM(), [100.0, 1.0])
    with pytest.raises(ValueError, match="num_steps=3"):
        sample(denoiser(rf), MultistepSampler(rf, [1.0, 0.5, 0.2]), torch.zeros(2, D), 2, kind="x0")
    with pytest.raises(ValueError, match="exactly 1 step"):
        OneStepSampler(rf).set_timesteps(2)
    with pytest.raises(ValueError, match="int >= 1"):
        EulerSampler(rf).set_timesteps(0)
    with pytest.raises(ValueError, match="same shape"):
        e.set_timesteps(2)
        e.step(torch.zeros(3, D), 1.0, x, kind="x0")
