"""Phased DMD: the subinterval x0 target is unbiased (closed form on Gaussian data, Monte Carlo on the
paper's 1-D toy) where the naive one is not; the phased gradient is DMD's at s = 0; each step is
answered by its phase's expert, and a phase trains its expert only."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.data.toy2d import Toy2DData
from anydistill.diffusion.methods.phased_dmd import PhasedDMD
from anydistill.diffusion.schedules import RectifiedFlow, VPCosine
from anydistill.diffusion.targets import dmd_gradient
from anydistill.diffusion.targets.phased import phased_dm_gradient, subinterval_x0_target, transition
from anydistill.models.flow_denoisers import mlp_flow_denoiser


@pytest.mark.parametrize("schedule", [RectifiedFlow(), VPCosine()], ids=["rectified-flow", "vp-cosine"])
@pytest.mark.parametrize(("s", "t"), [(0.2, 0.5), (0.5, 0.9), (0.3, 0.31)])
def test_the_target_is_unbiased_in_closed_form_on_gaussian_data(schedule, s, t) -> None:
    """x0 ~ N(m, v): E[T | x_t] is linear, Cov(T, x_t) = Cov(x0, x_t) and E[T] = E[x0]; the naive x_s/alpha_s differs."""
    like = torch.zeros(1, dtype=torch.float64)
    a_s, sig_s, a_ts, sig_ts = (v.item() for v in transition(schedule, torch.tensor([s]), torch.tensor([t]), like))
    a_t, v = a_ts * a_s, 0.7
    c = a_t * sig_s**2 / (a_s**2 * sig_ts)
    # T = x0 + (sig_s / a_s) e1 - c e2 ; x_t = a_t x0 + a_ts sig_s e1 + sig_ts e2
    cov_target = a_t * v + (sig_s / a_s) * a_ts * sig_s - c * sig_ts
    cov_naive = a_t * v + (sig_s / a_s) * a_ts * sig_s
    assert cov_target == pytest.approx(a_t * v, rel=1e-12)
    assert abs(cov_naive - a_t * v) > 1e-3


def test_the_target_is_unbiased_by_monte_carlo_on_the_papers_toy() -> None:
    """x0 in {-1, 0, 1, 2}: binned means of T match those of x0 given x_t; the naive target's do not."""
    schedule, g = RectifiedFlow(), torch.Generator().manual_seed(0)
    n, s, t = 400_000, 0.5, 0.8
    x0 = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)[torch.randint(4, (n, 1), generator=g)]
    x_s = schedule.add_noise(x0, torch.randn(n, 1, generator=g, dtype=torch.float64), torch.full((n,), s, dtype=torch.float64))
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    a_s, _, a_ts, sig_ts = transition(schedule, torch.full((n,), s), torch.full((n,), t), x_s)
    x_t = a_ts * x_s + sig_ts * noise
    target, _ = subinterval_x0_target(x_s, torch.full((n,), s), torch.full((n,), t), noise, schedule)
    bins = torch.bucketize(x_t[:, 0], torch.linspace(-1.0, 1.5, 11, dtype=torch.float64))
    ours, naive = [], []
    for b in range(1, 11):
        rows = bins == b
        truth = x0[rows].mean()
        ours.append(abs(target[rows].mean() - truth).item())
        naive.append(abs((x_s[rows] / a_s[rows]).mean() - truth).item())
    assert max(ours) < 0.03, ours
    assert max(naive) > 0.1 and max(naive) > 4 * max(ours), naive


def test_at_the_clean_end_the_phased_gradient_is_dmds() -> None:
    schedule, g = RectifiedFlow(), torch.Generator().manual_seed(1)
    x, noise, t = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g), torch.rand(32, generator=g) * 0.9 + 0.05
    real = lambda x_t, tt: 0.5 * x_t  # noqa: E731
    fake = lambda x_t, tt: 0.3 * x_t + 0.1  # noqa: E731
    torch.testing.assert_close(phased_dm_gradient(x, torch.zeros(32), t, noise, real, fake, schedule),
                               dmd_gradient(x, t, noise, real, fake, schedule))


def tiny(seed: int):
    torch.manual_seed(seed)
    return mlp_flow_denoiser((2,), 0, hidden=16, depth=1, time_embedding=8)


def test_each_step_goes_to_its_phase_and_a_phase_trains_its_expert_only() -> None:
    L.seed_everything(0, verbose=False)
    method = PhasedDMD(tiny(1), Teacher(tiny(0)), phases=2, num_steps=4, phase_iterations=4, update_ratio=1)
    method.setup("fit")
    router = method.student.net
    assert router.group(None, torch.tensor(method.times)).tolist() == [0, 0, 1, 1]
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in router.nets]
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(method, datamodule=Toy2DData(num_train=128, num_val=32, num_test=64, batch_size=64))  # 4 iterations: phase 0 only
    moved = [any(not torch.equal(v, b[k]) for k, v in net.state_dict().items()) for net, b in zip(router.nets, before)]
    assert moved == [True, False]


def test_steps_must_split_into_phases() -> None:
    with pytest.raises(ValueError, match="multiple of phases"):
        PhasedDMD(tiny(1), Teacher(tiny(0)), phases=3, num_steps=4)
