"""Checks of `anydistill.diffusion.targets` on plain tensors and analytic models (no training).

The analytic model is the one of ``test_samplers.py``: data x0 ~ N(mu, s^2 I), whose exact
denoiser E[x0 | x_t] is affine in x_t. Where a check must not depend on the teacher being exact
(progressive distillation), an arbitrary smooth nonlinear ``x0`` predictor is used instead.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from anydistill.diffusion.samplers import (
    DDIMSampler,
    EulerSampler,
    HeunSampler,
    sample,
    time_grid,
)
from anydistill.diffusion.schedules import EDM, NoiseSchedule, RectifiedFlow, TrigFlow, VPCosine
from anydistill.diffusion.targets import (
    consistency_coefficients,
    consistency_distillation_pair,
    consistency_parametrisation,
    ddim_step,
    dmd_gradient,
    dmd_surrogate_loss,
    ict_huber_c,
    pd_times,
    pd_weight,
    progressive_distillation_target,
    pseudo_huber,
    rectified_flow_loss,
)

D = 4
MU = torch.linspace(-1.0, 1.0, D, dtype=torch.float64)
S = 0.5

SCHEDULES = [RectifiedFlow(), VPCosine(), EDM(), TrigFlow(sigma_d=0.5)]
IDS = [type(s).__name__ for s in SCHEDULES]


def _spacing(schedule: NoiseSchedule) -> str:
    return "karras" if isinstance(schedule, EDM) else "uniform"


def _noise(schedule: NoiseSchedule, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return schedule.sample_noise(torch.zeros(n, D, dtype=torch.float64), g)


def gaussian_denoiser(schedule: NoiseSchedule):
    """The exact E[x0 | x_t] for x0 ~ N(MU, S^2 I)."""

    def x0_fn(x_t, t):
        a = schedule.alpha(t).reshape(-1, 1)
        v = a**2 * S**2 + schedule.sigma(t).reshape(-1, 1) ** 2 * schedule.noise_std**2
        return MU + a * S**2 / v * (x_t - a * MU)

    return x0_fn


def smooth_teacher(x_t, t):
    """An arbitrary smooth, nonlinear x0 predictor: not the denoiser of any data."""
    tt = t.reshape(-1, 1)
    return torch.tanh(0.7 * x_t + 0.3) * (1 + 0.5 * torch.cos(tt)) + 0.1 * torch.sin(3 * tt)


# ----------------------------------------------------------------------------------------------
# DDIM


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_ddim_step_with_exact_x0_of_point_mass_stays_on_the_path(schedule):
    grid = time_grid(schedule, 8, spacing=_spacing(schedule))
    n = 7
    t, s = grid[:n], grid[1 : n + 1]  # includes s = t_min
    eps = _noise(schedule, n)
    x_t = schedule.add_noise(MU.expand(n, D), eps, t)
    x0_exact = MU.expand(n, D)  # the data are the single point MU
    x_s = ddim_step(x_t, x0_exact, t, s, schedule)
    torch.testing.assert_close(x_s, schedule.add_noise(MU.expand(n, D), eps, s), rtol=0, atol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_ddim_step_equals_ddim_sampler_step(schedule):
    sampler = DDIMSampler(schedule, spacing=_spacing(schedule))
    sampler.set_timesteps(5)
    x = _noise(schedule, 3, seed=1) * sampler.init_noise_sigma
    grid = time_grid(schedule, 5, spacing=_spacing(schedule))
    for i, t in enumerate(sampler.timesteps):
        x0 = smooth_teacher(x, t.expand(3))
        expected = sampler.step(x0, t, x, kind="x0")
        torch.testing.assert_close(ddim_step(x, x0, t, grid[i + 1], schedule), expected)
        x = expected


# ----------------------------------------------------------------------------------------------
# progressive distillation


@pytest.mark.parametrize("num_steps", [1, 3])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_pd_times_are_the_teacher_grid_of_twice_the_steps(schedule, num_steps):
    for spacing in ("uniform", "karras"):
        student = time_grid(schedule, num_steps, spacing=spacing)
        teacher = time_grid(schedule, 2 * num_steps, spacing=spacing)
        t_mid, t_next = pd_times(student[:-1], schedule, num_steps, spacing=spacing)
        torch.testing.assert_close(t_mid, teacher[1::2], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(t_next, teacher[2::2], rtol=1e-12, atol=1e-12)
    # a shorter range (t_start) maps the same way
    t_start = 0.5 * (schedule.t_min + schedule.t_max)
    student = time_grid(schedule, num_steps, t_start=t_start)
    teacher = time_grid(schedule, 2 * num_steps, t_start=t_start)
    t_mid, t_next = pd_times(student[:-1], schedule, num_steps, t_start=t_start)
    torch.testing.assert_close(t_mid, teacher[1::2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t_next, teacher[2::2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_steps", [1, 4])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_pd_target_makes_one_student_step_reproduce_two_teacher_steps(schedule, num_steps):
    spacing = _spacing(schedule)
    # the teacher's own 2N-step DDIM trajectory: state 2k is at the student's k-th time
    z = _noise(schedule, 1, seed=2)
    teacher_run = sample(
        smooth_teacher, DDIMSampler(schedule, spacing=spacing), z, 2 * num_steps, kind="x0",
        return_trajectory=True,
    )
    states = teacher_run.trajectory
    grid = time_grid(schedule, num_steps, spacing=spacing)
    x_t = torch.cat([states[2 * k] for k in range(num_steps)])  # one example per student time
    x_teacher = torch.cat([states[2 * k + 2] for k in range(num_steps)])
    t, s = grid[:-1], grid[1:]

    target = progressive_distillation_target(
        x_t, t, smooth_teacher, schedule, num_steps, spacing=spacing
    )
    x_student = ddim_step(x_t, target, t, s, schedule)
    torch.testing.assert_close(x_student, x_teacher, rtol=1e-9, atol=1e-9)
    assert not target.requires_grad


def test_pd_target_matches_the_official_log_snr_formula():
    # google-research dpm.py writes the target in log-SNR on a variance-preserving path:
    # stdv_frac = sigma_s / sigma_t = exp((softplus(l_t) - softplus(l_s)) / 2)
    schedule, n_student = VPCosine(), 4
    t = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    x_t = schedule.add_noise(MU.expand(4, D), _noise(schedule, 4, seed=3), t)

    def logsnr(u):
        return schedule.log_snr(u.clamp(min=1e-12))

    def ddim_log_snr(z, u, u_next):
        x = smooth_teacher(z, u)
        lam, lam_next = logsnr(u)[:, None], logsnr(u_next)[:, None]
        eps = (z - torch.sigmoid(lam).sqrt() * x) / torch.sigmoid(-lam).sqrt()
        return torch.sigmoid(lam_next).sqrt() * x + torch.sigmoid(-lam_next).sqrt() * eps, x

    z_mid, _ = ddim_log_snr(x_t, t, t - 0.5 / n_student)
    z_teacher, x_pred = ddim_log_snr(z_mid, t - 0.5 / n_student, t - 1.0 / n_student)
    lam_t, lam_s = logsnr(t)[:, None], logsnr(t - 1.0 / n_student)[:, None]
    frac = torch.exp(0.5 * (F.softplus(lam_t) - F.softplus(lam_s)))
    a_s, a_t = torch.sigmoid(lam_s).sqrt(), torch.sigmoid(lam_t).sqrt()
    official = (z_teacher - frac * x_t) / (a_s - frac * a_t)
    official[-1] = x_pred[-1]  # the official code's i == 0 case: the last step lands on data

    ours = progressive_distillation_target(x_t, t, smooth_teacher, schedule, n_student)
    torch.testing.assert_close(ours, official, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_pd_weight_is_truncated_snr_and_equals_max_of_x_and_eps_mse(schedule):
    t = time_grid(schedule, 9, spacing=_spacing(schedule))[:-1]
    snr = schedule.snr(t)
    torch.testing.assert_close(pd_weight(t, schedule), torch.maximum(snr, torch.ones_like(snr)))
    torch.testing.assert_close(pd_weight(t, schedule, "snr"), snr)
    torch.testing.assert_close(pd_weight(t, schedule, "snr+1"), snr + 1)
    torch.testing.assert_close(pd_weight(t, schedule, "constant"), torch.ones_like(t))
    # official 'snr_trunc': max(x_mse, eps_mse) for two x0 predictions at the same x_t
    x_t = schedule.add_noise(MU.expand(len(t), D), _noise(schedule, len(t), seed=4), t)
    x_a = smooth_teacher(x_t, t)
    x_b = x_a + 0.1 * torch.randn(len(t), D, dtype=torch.float64)
    x_mse = (x_a - x_b).pow(2).mean(1)
    eps_a, eps_b = (schedule.to_eps(x, x_t, t, "x0") for x in (x_a, x_b))
    eps_mse = (eps_a - eps_b).pow(2).mean(1)
    torch.testing.assert_close(pd_weight(t, schedule) * x_mse, torch.maximum(x_mse, eps_mse))


def test_pd_validation_reports_every_problem():
    with pytest.raises(ValueError) as info:
        pd_times(torch.ones(2), VPCosine(), 0, spacing="karas", rho=-1.0)
    message = str(info.value)
    assert "num_student_steps" in message and "did you mean 'karras'" in message
    assert "'rho'" in message
    with pytest.raises(ValueError, match="did you mean 'snr_trunc'"):
        pd_weight(torch.ones(2), VPCosine(), "snr_trun")


# ----------------------------------------------------------------------------------------------
# consistency distillation


@pytest.mark.parametrize("schedule", [EDM(), RectifiedFlow()], ids=["EDM", "RectifiedFlow"])
def test_cd_heun_pair_equals_heun_sampler_steps(schedule):
    x0_fn = gaussian_denoiser(schedule)

    def velocity_fn(x, t):
        return schedule.convert(x0_fn(x, t), x, t, "x0", "velocity")

    num_steps = 5
    sampler = HeunSampler(schedule, spacing=_spacing(schedule))
    sampler.set_timesteps(num_steps)
    grid = time_grid(schedule, num_steps, spacing=_spacing(schedule))
    x = _noise(schedule, 3, seed=5) * sampler.init_noise_sigma
    on_path = [x]  # the states at the grid times
    for t in sampler.timesteps:
        x = sampler.step(velocity_fn(x, t.expand(3)), t, x, kind="velocity")
        if sampler.state_in_first_order:
            on_path.append(x)
    # every step but the last, which HeunSampler takes with Euler
    for i in range(num_steps - 1):
        t_next, t_cur = grid[i].expand(3), grid[i + 1].expand(3)
        x_hat = consistency_distillation_pair(
            on_path[i], t_next, t_cur, velocity_fn, schedule, "heun"
        )
        torch.testing.assert_close(x_hat, on_path[i + 1])
        # the same teacher as an x0 predictor, converted inside
        x_hat_x0 = consistency_distillation_pair(
            on_path[i], t_next, t_cur, x0_fn, schedule, kind="x0"
        )
        torch.testing.assert_close(x_hat_x0, on_path[i + 1])


def test_cd_heun_pair_matches_the_official_edm_heun_solver():
    # openai/consistency_models heun_solver: d = (x - D(x, t)) / t, always with the correction
    schedule = EDM()
    denoise = gaussian_denoiser(schedule)
    t = torch.tensor([80.0, 2.0, 0.01], dtype=torch.float64)
    next_t = torch.tensor([60.0, 1.5, 0.002], dtype=torch.float64)
    x = schedule.add_noise(MU.expand(3, D), _noise(schedule, 3, seed=6), t)
    d = (x - denoise(x, t)) / t[:, None]
    x_euler = x + d * (next_t - t)[:, None]
    next_d = (x_euler - denoise(x_euler, next_t)) / next_t[:, None]
    official = x + (d + next_d) * ((next_t - t) / 2)[:, None]
    ours = consistency_distillation_pair(x, t, next_t, denoise, schedule, "heun", kind="x0")
    torch.testing.assert_close(ours, official)
    euler = consistency_distillation_pair(x, t, next_t, denoise, schedule, "euler", kind="x0")
    torch.testing.assert_close(euler, x_euler)


def test_cd_euler_pair_equals_euler_sampler_step():
    schedule = VPCosine()
    x0_fn = gaussian_denoiser(schedule)
    sampler = EulerSampler(schedule)
    sampler.set_timesteps(4)
    grid = time_grid(schedule, 4)
    x = _noise(schedule, 2, seed=7)
    t = sampler.timesteps[0]
    expected = sampler.step(x0_fn(x, t.expand(2)), t, x, kind="x0")
    ours = consistency_distillation_pair(x, grid[0], grid[1], x0_fn, schedule, "euler", kind="x0")
    torch.testing.assert_close(ours, expected)
    with pytest.raises(ValueError, match="did you mean 'heun'"):
        consistency_distillation_pair(x, grid[0], grid[1], x0_fn, schedule, "hean")


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_consistency_parametrisation_satisfies_the_boundary_condition(schedule):
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    network_out = torch.randn(5, 3, 2, dtype=torch.float64) * 10
    t_min = torch.full((5,), float(schedule.t_min), dtype=torch.float64)
    f = consistency_parametrisation(x, t_min, network_out, schedule)
    torch.testing.assert_close(f, x, rtol=0, atol=1e-12)
    # and at a custom boundary t_min > schedule.t_min: f(x, t_min) = x / alpha(t_min)
    boundary = schedule.t_min + 0.07 * (schedule.t_max - schedule.t_min)
    tb = torch.full((5,), boundary, dtype=torch.float64)
    f = consistency_parametrisation(x, tb, network_out, schedule, t_min=boundary)
    torch.testing.assert_close(f, x / schedule.alpha(tb)[:, None, None], rtol=0, atol=1e-12)
    # finite at the noise end, where alpha may be 0
    t_max = torch.full((5,), float(schedule.t_max), dtype=torch.float64)
    assert torch.isfinite(consistency_parametrisation(x, t_max, network_out, schedule)).all()


def test_consistency_coefficients_are_the_papers_in_edm_units():
    schedule, sd, eps = EDM(), 0.5, 0.002
    sigma = torch.tensor([0.002, 0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out = consistency_coefficients(sigma, schedule, sd)
    torch.testing.assert_close(c_skip, sd**2 / ((sigma - eps) ** 2 + sd**2))
    torch.testing.assert_close(c_out, sd * (sigma - eps) / torch.sqrt(sd**2 + sigma**2))
    # another schedule: the EDM formula applied to x_t / alpha at the EDM noise level
    vp = VPCosine()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x, out = torch.randn(3, D, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    level, alpha = vp.edm_sigma(t)[:, None], vp.alpha(t)[:, None]
    c_skip, c_out = sd**2 / (level**2 + sd**2), sd * level / torch.sqrt(sd**2 + level**2)
    expected = c_skip * (x / alpha) + c_out * out
    torch.testing.assert_close(consistency_parametrisation(x, t, out, vp, sd), expected)


# ----------------------------------------------------------------------------------------------
# pseudo-Huber


def test_pseudo_huber_is_quadratic_for_small_and_linear_for_large_distances():
    b = torch.zeros(3, 8, dtype=torch.float64)
    direction = torch.randn(3, 8, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    c = 0.1
    small = pseudo_huber(1e-4 * direction, b, c)  # ||d|| = 1e-4 << c
    expected_small = torch.full((3,), 1e-8 / (2 * c), dtype=torch.float64)
    torch.testing.assert_close(small, expected_small, rtol=1e-6, atol=0)
    large = pseudo_huber(1e4 * direction, b, c)  # ||d|| = 1e4 >> c
    torch.testing.assert_close(large, torch.full((3,), 1e4, dtype=torch.float64), rtol=2e-5, atol=0)
    # the closed form, and a finite gradient at zero distance
    a = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    direct = torch.sqrt(((a - b) ** 2).sum(1) + c**2) - c
    torch.testing.assert_close(pseudo_huber(a, b, c), direct)
    zero = torch.zeros(3, 8, dtype=torch.float64, requires_grad=True)
    pseudo_huber(zero, b, c).sum().backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))


def test_pseudo_huber_default_c_is_icts():
    assert ict_huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(pseudo_huber(a, b), pseudo_huber(a, b, 0.00054 * math.sqrt(48)))
    with pytest.raises(ValueError, match="'c' argument of pseudo_huber must be a float > 0"):
        pseudo_huber(a, b, 0.0)


# ----------------------------------------------------------------------------------------------
# DMD


def _constant(value):
    return lambda x_t, t: value.expand_as(x_t).clone()


def test_dmd_surrogate_loss_gradient_equals_grad():
    x = torch.randn(4, 3, 5, requires_grad=True)
    grad = torch.randn(4, 3, 5)
    (g,) = torch.autograd.grad(dmd_surrogate_loss(x, grad), x)
    torch.testing.assert_close(g, grad)
    # DMD2's 0.5 * F.mse_loss(..., reduction="mean"): gradient grad / numel
    loss = dmd_surrogate_loss(x, grad, reduction="mean")
    torch.testing.assert_close(loss, 0.5 * F.mse_loss(x, (x - grad).detach()))
    (g,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g, grad / x.numel())


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_dmd_gradient_is_zero_when_fake_and_real_agree(schedule):
    x = torch.randn(4, D, dtype=torch.float64)
    t = time_grid(schedule, 4, spacing=_spacing(schedule))[:-1]
    noise = _noise(schedule, 4, seed=8)
    denoiser = gaussian_denoiser(schedule)
    grad = dmd_gradient(x, t, noise, denoiser, denoiser, schedule)
    assert torch.equal(grad, torch.zeros_like(grad))
    # the real predictor returns x itself: 0/0 normalisation gives 0 (DMD2's nan_to_num)
    same = dmd_gradient(x, t, noise, _constant(x), _constant(x), schedule)
    assert torch.equal(same, torch.zeros_like(same))


def test_dmd_gradient_sign_and_normalisation_match_dmd2():
    schedule = EDM()
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    t = torch.tensor([0.5, 2.0, 10.0])
    noise = torch.randn_like(x)
    x0_real, x0_fake = torch.randn_like(x), torch.randn_like(x)
    grad = dmd_gradient(x, t, noise, _constant(x0_real), _constant(x0_fake), schedule)
    assert not grad.requires_grad
    # tianweiy/DMD2 edm_guidance.py: p = x - x0_hat, grad = (p_real - p_fake) / mean|p_real|
    p_real, p_fake = x.detach() - x0_real, x.detach() - x0_fake
    official = (p_real - p_fake) / p_real.abs().mean(dim=[1, 2, 3], keepdim=True)
    torch.testing.assert_close(grad, official)
    # descending along it moves x towards the real prediction and away from the fake one
    x_new = x.detach() - 1e-3 * grad
    assert ((x_new - x0_real).norm() < (x.detach() - x0_real).norm()).item()
    assert ((x_new - x0_fake).norm() > (x.detach() - x0_fake).norm()).item()


# ----------------------------------------------------------------------------------------------
# rectified flow


@pytest.mark.parametrize("loss", ["l2", "pseudo_huber"])
def test_rectified_flow_loss_is_zero_for_the_exact_velocity(loss):
    schedule = RectifiedFlow()
    x0, noise = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    t = torch.rand(6)
    # the schedule's velocity d_alpha x0 + d_sigma noise = noise - x0
    velocity = schedule.convert(x0, schedule.add_noise(x0, noise, t), t, "x0", "velocity")
    exact = torch.zeros((), dtype=torch.float32)
    loss_value = rectified_flow_loss(velocity, x0, noise, t, loss)
    torch.testing.assert_close(loss_value, exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(rectified_flow_loss(noise - x0, x0, noise, t, loss), exact)
    wrong = rectified_flow_loss(velocity + 0.1, x0, noise, t, loss)
    assert wrong.item() > 0


def test_rectified_flow_loss_matches_rfpp_huber_and_weighting():
    x0, noise, v = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    t = torch.rand(5)
    d = 3 * 8 * 8
    # sangyun884/rfpp train.py, loss_type="huber": c = 0.00054 d, divided by d
    c = 0.00054 * d
    huber = (torch.sqrt(((v - (noise - x0)) ** 2).sum(dim=(1, 2, 3)) + c**2) - c) / d
    torch.testing.assert_close(rectified_flow_loss(v, x0, noise, t, "pseudo_huber"), huber.mean())
    torch.testing.assert_close(
        rectified_flow_loss(v, x0, noise, t, "pseudo_huber", weighting="rfpp"),
        ((1 - t) * huber).mean(),
    )
    l2 = ((v - (noise - x0)) ** 2).mean(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(rectified_flow_loss(v, x0, noise, t), l2)
    # gradients flow to the model's velocity
    v.requires_grad_(True)
    rectified_flow_loss(v, x0, noise, t, "pseudo_huber").backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()
    with pytest.raises(ValueError) as info:
        rectified_flow_loss(v[:2], x0, noise, t, "huber", weighting="rf++")
    message = str(info.value)
    assert "same shape" in message and "'loss'" in message and "'weighting'" in message
