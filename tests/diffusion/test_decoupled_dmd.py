"""Decoupled DMD: the guided DMD gradient is DM + (alpha - 1) CA on the exact teacher, the mean-var
KL is its closed form, the schedules put each term's time where the paper says, and the method's
options reach its recipe schema (through dmd2's)."""

from __future__ import annotations

import math

import pytest
import torch

from anydistill.core.recipe import parameters_of
from anydistill.core.teacher import Teacher
from anydistill.diffusion.analytic_mixture import analytic_mixture
from anydistill.diffusion.common import diffusion_teacher, predict
from anydistill.diffusion.distribution_matching import mean_variance_kl
from anydistill.diffusion.methods.decoupled_dmd import DecoupledDMD
from anydistill.diffusion.schedules import RectifiedFlow
from anydistill.diffusion.targets import decoupled_dmd_gradient, dmd_gradient
from anydistill.models.flow_denoisers import mlp_flow_denoiser

CLASSES = 8


def exact_teacher():
    return diffusion_teacher(analytic_mixture((2,), CLASSES, distribution="class_conditional_mixture"))


def fake_net():
    torch.manual_seed(0)
    return mlp_flow_denoiser((2,), CLASSES, schedule="rectified-flow", prediction="velocity", hidden=16, depth=2)


@pytest.mark.parametrize("normalise", ["per-term", "joint"])
@pytest.mark.parametrize("alpha", [1.0, 3.0, 7.5])
def test_cfg_dmd_is_dm_plus_alpha_minus_one_ca_on_the_exact_teacher(alpha, normalise) -> None:
    teacher, fake, schedule = exact_teacher(), fake_net(), RectifiedFlow()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 2
    cond = torch.randint(CLASSES, (64,), generator=g)
    t, noise = torch.rand(64, generator=g, dtype=torch.float64) * 0.96 + 0.02, torch.randn(64, 2, generator=g, dtype=torch.float64)
    fake_fn = lambda x_t, tt: predict(fake.double(), x_t, tt, cond, "x0")  # noqa: E731
    guided = dmd_gradient(x, t, noise, lambda x_t, tt: teacher.predict(x_t, tt, cond, kind="x0", cfg=alpha), fake_fn, schedule)
    split = decoupled_dmd_gradient(x, alpha, lambda x_t, tt: teacher.predict_pair(x_t, tt, cond, kind="x0"), fake_fn, schedule,
                                   dm=(t, noise), ca=(t, noise), normalise=normalise)
    torch.testing.assert_close(split, guided, rtol=0, atol=1e-6)
    ca_only = decoupled_dmd_gradient(x, alpha, lambda x_t, tt: teacher.predict_pair(x_t, tt, cond, kind="x0"), fake_fn, schedule,
                                     dm=None, ca=(t, noise))
    dm_only = decoupled_dmd_gradient(x, alpha, lambda x_t, tt: teacher.predict_pair(x_t, tt, cond, kind="x0"), fake_fn, schedule,
                                     dm=(t, noise), ca=None)
    torch.testing.assert_close(ca_only + dm_only, guided, rtol=0, atol=1e-6)
    if alpha == 1.0:
        assert ca_only.abs().max() == 0  # no guidance, no CFG augmentation
    # Joint: the CA term taken elsewhere keeps the DM level's normaliser (its size is its own, not rescaled).
    later = (t * 0.1, torch.randn(64, 2, generator=g, dtype=torch.float64))
    joint = decoupled_dmd_gradient(x, alpha, lambda x_t, tt: teacher.predict_pair(x_t, tt, cond, kind="x0"), fake_fn, schedule,
                                   dm=(t, noise), ca=later, normalise="joint")
    x_t = schedule.add_noise(x, later[1], later[0])
    c, u = teacher.predict_pair(x_t, later[0], cond, kind="x0")
    norm = (x - teacher.predict(schedule.add_noise(x, noise, t), t, cond, kind="x0", cfg=alpha)).abs().mean(1, keepdim=True)
    torch.testing.assert_close(joint, dm_only - (alpha - 1) * (c - u) / norm, rtol=0, atol=1e-6)


def test_mean_variance_kl_is_the_closed_form() -> None:
    g = torch.Generator().manual_seed(2)
    x, ref = torch.randn(5, 3, 4, 4, generator=g) * 1.7 + 0.3, torch.randn(40, 3, 4, 4, generator=g) * 0.9 - 0.1
    mu_r, var_r = ref.flatten(1).mean(1).mean().item(), ref.flatten(1).var(1, unbiased=False).mean().item()
    expected = 0.0
    for row in x.flatten(1):
        mu, var = row.mean().item(), row.var(unbiased=False).item()
        expected += math.log(math.sqrt(var_r) / math.sqrt(var)) + (var + (mu - mu_r) ** 2) / (2 * var_r) - 0.5
    assert mean_variance_kl(x, ref).item() == pytest.approx(expected / 5, rel=1e-5)
    standard = lambda a: (a - a.mean(1, keepdim=True)) / a.std(1, unbiased=False, keepdim=True)  # noqa: E731
    assert mean_variance_kl(standard(torch.randn(6, 64, generator=g)), standard(torch.randn(9, 64, generator=g))).abs() < 1e-5


def method(schedule: str, **options) -> DecoupledDMD:
    student = mlp_flow_denoiser((2,), CLASSES, schedule="rectified-flow", prediction="velocity", hidden=16, depth=2)
    m = DecoupledDMD(student, Teacher(fake_net()), cfg=3.0, num_steps=4, schedule=schedule, **options)
    m.setup("fit")
    return m


@pytest.mark.parametrize("schedule", ["constrained", "hybrid"])
def test_constrained_times_are_less_noisy_than_the_generator_input(schedule) -> None:
    m = method(schedule)
    for k in range(1, 4):
        t = m.term_time(True, k, 2000, "cpu")
        assert t.max().item() <= m.times[k] and t.min().item() >= m.schedule.t_min + 0.02 * (m.schedule.t_max - m.schedule.t_min) - 1e-6
    assert m.term_time(True, 0, 2000, "cpu").max().item() > m.times[1]  # pure noise in: the whole range


def test_the_options_are_dmd2s_plus_its_own_and_cfg_is_required() -> None:
    fields = parameters_of(DecoupledDMD, frozenset({"student", "teacher", "optimizer"}))
    assert {"update_ratio", "num_steps", "student_inputs", "init_from", "terms", "regulariser", "schedule"} <= set(fields)
    assert fields["cfg"][1] is ...
    with pytest.raises(ValueError, match="class-conditional"):
        unconditional = mlp_flow_denoiser((2,), 0, schedule="rectified-flow", prediction="velocity", hidden=16, depth=2)
        DecoupledDMD(unconditional, Teacher(mlp_flow_denoiser((2,), 0, schedule="rectified-flow", prediction="velocity", hidden=16,
                                                               depth=2)), cfg=3.0).setup("fit")


@pytest.mark.parametrize(("terms", "regulariser"), [("ca", "dm"), ("dm", "dm"), ("ca+dm", "mean-var"), ("ca+dm", "dm")])
def test_each_variant_gives_a_finite_generator_loss_with_gradient(terms, regulariser) -> None:
    m = method("hybrid", terms=terms, regulariser=regulariser)
    m.log_train = lambda *args, **kwargs: None
    with torch.no_grad():  # the fake score starts as the teacher, where DM is 0: move it as training would
        for p in m.fake.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = predict(m.student, torch.randn(16, 2), torch.full((16,), m.times[1]), torch.randint(CLASSES, (16,)), "x0")
    loss = m.generator_objective(x, torch.randint(CLASSES, (16,)), 1, torch.randn(16, 2))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.student.parameters())
