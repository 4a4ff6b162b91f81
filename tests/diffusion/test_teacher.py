"""`anydistill.diffusion.teacher`: the frozen DiffusionTeacher (kinds, guidance, EDM
preconditioning) and `denoiser_loss`.

Predictions are checked in float64 against `NoiseSchedule.convert` applied to the raw network, and
the loss targets are written here from their definitions (x0, eps, v = alpha eps - sigma x0,
velocity = d_alpha x0 + d_sigma eps).
"""

import math

import pytest
import torch
from torch import nn

from anydistill.diffusion.schedules import EDM, PREDICTION_KINDS, RectifiedFlow, TrigFlow, VPCosine
from anydistill.diffusion.teacher import DiffusionTeacher, denoiser_loss, network_output
from anydistill.models.denoisers import mlp_denoiser
from anydistill.data.toy2d_distributions import eight_gaussians

SCHEDULES = [VPCosine(), EDM(), RectifiedFlow(), TrigFlow(sigma_d=0.5)]
IDS = [type(s).__name__ for s in SCHEDULES]
B = 6
K = 3  # classes; the null class is 3


def _net(seed=0, num_classes=K):
    torch.manual_seed(seed)
    return mlp_denoiser(2, hidden=16, depth=1, num_classes=num_classes).double()


def _batch(schedule, seed=1):
    """float64 x_t, times in the middle of the schedule's range (log-uniform for EDM), labels."""
    g = torch.Generator().manual_seed(seed)
    u = 0.1 + 0.8 * torch.rand(B, generator=g, dtype=torch.float64)
    if isinstance(schedule, EDM):
        t = torch.exp(math.log(0.01) + (math.log(20) - math.log(0.01)) * u)
    else:
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * u
    x_t = torch.randn(B, 2, generator=g, dtype=torch.float64)
    cond = torch.randint(K, (B,), generator=g)
    return x_t, t, cond


def _targets(schedule, x0, noise, t):
    def e(c):
        return c.reshape(-1, *([1] * (x0.ndim - 1)))

    return {
        "x0": x0,
        "eps": noise,
        "v": e(schedule.alpha(t)) * noise - e(schedule.sigma(t)) * x0,
        "velocity": e(schedule.d_alpha(t)) * x0 + e(schedule.d_sigma(t)) * noise,
    }


class CountingNet(nn.Module):
    """Wraps a net and records the batch size of every forward."""

    def __init__(self, net, expose_null=True):
        super().__init__()
        self.net, self.calls = net, []
        if not expose_null:
            self.null_class = None

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        return self.net(x, t, cond)


# ----------------------------------------------------------------------------------------------
# frozen


def test_teacher_is_frozen_and_never_registered():
    teacher = DiffusionTeacher(_net(), RectifiedFlow(), "velocity")
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())

    x_t, t, cond = _batch(RectifiedFlow())
    before = teacher.predict(x_t, t, cond)
    teacher.model.train()  # someone flips it; predict puts it back
    x_t.requires_grad_(True)
    after = teacher.predict(x_t, t, cond)
    assert not teacher.model.training and not after.requires_grad
    torch.testing.assert_close(after, before, rtol=0, atol=0)

    holder = nn.Module()
    holder.teacher = teacher
    holder.student = nn.Linear(2, 2)
    assert set(holder.state_dict()) == {"student.weight", "student.bias"}
    assert len(list(holder.parameters())) == 2
    assert teacher.to("cpu") is teacher and teacher.num_parameters() > 0


def test_fingerprint_tracks_weights_and_everything_that_changes_predictions():
    net = _net()
    base = DiffusionTeacher(net, RectifiedFlow(), "velocity")
    assert base.fingerprint() == DiffusionTeacher(_net(), RectifiedFlow(), "velocity").fingerprint()
    others = [
        DiffusionTeacher(net, RectifiedFlow(), "eps"),
        DiffusionTeacher(net, VPCosine(), "velocity"),
        DiffusionTeacher(net, TrigFlow(sigma_d=1.0), "velocity"),
        DiffusionTeacher(net, EDM(), "x0", preconditioning="edm"),
        DiffusionTeacher(net, RectifiedFlow(), "velocity", spec="other recipe"),
    ]
    assert len({base.fingerprint(), *(o.fingerprint() for o in others)}) == 1 + len(others)
    with torch.no_grad():
        next(net.parameters())[0, 0] += 1e-3
    assert base.fingerprint() != DiffusionTeacher(_net(), RectifiedFlow(), "velocity").fingerprint()


# ----------------------------------------------------------------------------------------------
# kinds and guidance


@pytest.mark.parametrize("prediction", PREDICTION_KINDS)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_predict_in_every_kind_is_schedule_convert_of_the_raw_output(schedule, prediction):
    net = _net()
    teacher = DiffusionTeacher(net, schedule, prediction)
    x_t, t, cond = _batch(schedule)
    with torch.no_grad():
        raw = net(x_t, t, cond)
    for kind in PREDICTION_KINDS:
        expected = schedule.convert(raw, x_t, t, prediction, kind)
        torch.testing.assert_close(teacher.predict(x_t, t, cond, kind=kind), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTION_KINDS)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_guidance_endpoints_linearity_across_kinds_and_pair_separability(schedule, prediction):
    teacher = DiffusionTeacher(_net(), schedule, prediction)
    x_t, t, cond = _batch(schedule)
    w = 3.5
    for kind in PREDICTION_KINDS:
        conditional = teacher.predict(x_t, t, cond, kind=kind)
        unconditional = teacher.predict(x_t, t, None, kind=kind)
        torch.testing.assert_close(teacher.predict(x_t, t, cond, kind=kind, cfg=1.0), conditional)
        torch.testing.assert_close(teacher.predict(x_t, t, cond, kind=kind, cfg=0.0), unconditional)

        pair_c, pair_u = teacher.predict_pair(x_t, t, cond, kind)
        torch.testing.assert_close(pair_c, conditional, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pair_u, unconditional, rtol=1e-12, atol=1e-12)
        assert (pair_c - pair_u).abs().max() > 1e-6  # the branches really differ

        # Guiding in the native kind and converting equals guiding after conversion.
        guided = teacher.predict(x_t, t, cond, kind=kind, cfg=w)
        torch.testing.assert_close(guided, pair_u + w * (pair_c - pair_u), rtol=1e-9, atol=1e-9)


def test_guidance_is_one_batched_forward_or_two_without_a_null_class():
    schedule = VPCosine()
    x_t, t, cond = _batch(schedule)
    batched = DiffusionTeacher(CountingNet(_net()), schedule, "eps", null_class=K)
    two_pass = DiffusionTeacher(CountingNet(_net(), expose_null=False), schedule, "eps")
    assert batched.null_class == K and two_pass.null_class is None
    a = batched.predict(x_t, t, cond, cfg=2.0)
    b = two_pass.predict(x_t, t, cond, cfg=2.0)
    assert batched.model.calls == [2 * B] and two_pass.model.calls == [B, B]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the null class is picked up from the zoo nets by default
    assert DiffusionTeacher(_net(), schedule, "eps").null_class == K


def test_per_example_guidance_weights_and_a_shared_time():
    schedule = RectifiedFlow()
    teacher = DiffusionTeacher(_net(), schedule, "velocity")
    x_t, t, cond = _batch(schedule)
    weights = torch.linspace(0, 4, B, dtype=torch.float64)
    per_example = teacher.predict(x_t, t, cond, cfg=weights)
    for i in range(B):
        one = teacher.predict(x_t[i : i + 1], t[i : i + 1], cond[i : i + 1], cfg=weights[i].item())
        torch.testing.assert_close(per_example[i : i + 1], one)
    shared = teacher.predict(x_t, t[0], cond, kind="eps")
    torch.testing.assert_close(shared, teacher.predict(x_t, t[0].expand(B), cond, kind="eps"))


def test_results_come_back_in_the_callers_dtype():
    torch.manual_seed(0)
    teacher = DiffusionTeacher(mlp_denoiser(2, hidden=8, depth=1), VPCosine(), "eps")  # float32 net
    x_t = torch.randn(B, 2, dtype=torch.float64)
    out = teacher.predict(x_t, torch.full((B,), 0.5, dtype=torch.float64), kind="x0")
    assert out.dtype == torch.float64 and out.shape == (B, 2)


# ----------------------------------------------------------------------------------------------
# EDM preconditioning


class ZeroNet(nn.Module):
    """Returns zeros and remembers its inputs."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, cond):
        self.seen = (x.clone(), t.clone())
        return torch.zeros_like(x)


def test_edm_preconditioning_feeds_c_in_x_and_c_noise_and_returns_c_skip_x_for_a_zero_net():
    schedule = EDM()
    net = ZeroNet()
    teacher = DiffusionTeacher(net, schedule, "x0", preconditioning="edm")
    x_t, t, _ = _batch(schedule)
    x0 = teacher.predict(x_t, t, kind="x0")
    torch.testing.assert_close(x0, schedule.c_skip(t)[:, None] * x_t, rtol=1e-12, atol=1e-12)
    seen_x, seen_t = net.seen
    torch.testing.assert_close(seen_x, schedule.c_in(t)[:, None] * x_t)
    torch.testing.assert_close(seen_t, schedule.c_noise(t))
    # other kinds follow from D like any x0 prediction
    torch.testing.assert_close(teacher.predict(x_t, t, kind="eps"), schedule.convert(x0, x_t, t, "x0", "eps"))


def test_configuration_errors_are_reported_together():
    with pytest.raises(ValueError) as info:
        DiffusionTeacher(_net(), VPCosine(), "eps", preconditioning="edm")
    message = str(info.value)
    assert "only with the EDM schedule" in message and "must be 'x0' with preconditioning='edm'" in message
    with pytest.raises(ValueError, match=r"did you mean 'velocity'\?"):
        DiffusionTeacher(_net(), RectifiedFlow(), "velocty")
    teacher = DiffusionTeacher(_net(), RectifiedFlow(), "velocity")
    x_t, t, cond = _batch(RectifiedFlow())
    with pytest.raises(ValueError, match=r"'kind' argument of DiffusionTeacher.predict .*did you mean 'eps'"):
        teacher.predict(x_t, t, cond, kind="epsilon")
    with pytest.raises(ValueError, match="needs class labels 'cond'"):
        teacher.predict(x_t, t, None, cfg=2.0)
    with pytest.raises(ValueError, match="'cfg' argument"):
        teacher.predict(x_t, t, cond, cfg=float("nan"))


# ----------------------------------------------------------------------------------------------
# denoiser_loss


class ExactNet(nn.Module):
    """Returns the exact target of its kind from the (x0, noise) it was given, or EDM's exact F."""

    def __init__(self, schedule, kind, x0, noise, t, preconditioned=False):
        super().__init__()
        self.target = _targets(schedule, x0, noise, t)[kind]
        if preconditioned:
            x_t = x0 + t[:, None] * noise
            self.target = (x0 - schedule.c_skip(t)[:, None] * x_t) / schedule.c_out(t)[:, None]

    def forward(self, x, t, cond):
        return self.target


def _loss_batch(schedule, seed=2):
    g = torch.Generator().manual_seed(seed)
    _, t, cond = _batch(schedule, seed)
    x0 = torch.randn(B, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(B, 2, generator=g, dtype=torch.float64) * schedule.noise_std
    return x0, t, noise, cond


@pytest.mark.parametrize("prediction", PREDICTION_KINDS)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_denoiser_loss_is_zero_for_the_exact_target(schedule, prediction):
    x0, t, noise, cond = _loss_batch(schedule)
    net = ExactNet(schedule, prediction, x0, noise, t)
    assert denoiser_loss(net, schedule, x0, t, noise, cond, prediction).item() < 1e-24
    # and positive for a network that is off by one everywhere
    off = lambda x, t, c: net(x, t, c) + 1  # noqa: E731
    assert denoiser_loss(off, schedule, x0, t, noise, cond, prediction).item() == pytest.approx(1.0)


def test_edm_loss_weighting_and_preconditioning():
    schedule = EDM()
    x0, t, noise, cond = _loss_batch(schedule)
    exact = ExactNet(schedule, "x0", x0, noise, t, preconditioned=True)
    loss = denoiser_loss(exact, schedule, x0, t, noise, cond, "x0", "edm", preconditioning="edm")
    assert loss.item() < 1e-20

    # lambda(sigma) ||D - x0||^2 with lambda = 1 / c_out^2, for an arbitrary network
    net = _net()
    x_t = schedule.add_noise(x0, noise, t)
    d = network_output(net, schedule, x_t, t, cond, "edm")
    per_example = (d - x0).pow(2).mean(dim=1)
    expected = (per_example / schedule.c_out(t) ** 2).mean()
    loss = denoiser_loss(net, schedule, x0, t, noise, cond, "x0", "edm", preconditioning="edm")
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=0)
    unweighted = denoiser_loss(net, schedule, x0, t, noise, cond, "x0", "none", preconditioning="edm")
    torch.testing.assert_close(unweighted, per_example.mean(), rtol=1e-9, atol=0)
    # the same weighting on a network that predicts x0 directly
    raw = net(x_t, t, cond)
    direct = denoiser_loss(net, schedule, x0, t, noise, cond, "x0", "edm")
    torch.testing.assert_close(direct, ((raw - x0).pow(2).mean(1) / schedule.c_out(t) ** 2).mean())

    with pytest.raises(ValueError) as info:
        denoiser_loss(net, VPCosine(), x0, t, noise, cond, "eps", "edm", preconditioning="edm")
    assert "needs the EDM schedule" in str(info.value) and "needs prediction='x0'" in str(info.value)


def test_denoiser_loss_drops_when_training_an_mlp_on_eight_gaussians():
    schedule = RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mlp_denoiser(2, hidden=64, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def draw(n):
        return eight_gaussians(n, g), torch.rand(n, generator=g), torch.randn(n, 2, generator=g)

    x_eval, t_eval, noise_eval = draw(2048)

    def eval_loss():
        with torch.no_grad():
            return denoiser_loss(model, schedule, x_eval, t_eval, noise_eval, None, "velocity").item()

    before = eval_loss()
    for _ in range(50):
        x0, t, noise = draw(256)
        loss = denoiser_loss(model, schedule, x0, t, noise, None, "velocity")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert loss.dtype == torch.float32
    assert after < 0.8 * before  # ~0.67 here; much of the loss is irreducible, (before, after)
