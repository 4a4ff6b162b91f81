"""Each diffusion method's loss on a fixed batch against a hand computation (tiny MLP denoisers on
rectified flow, where x0 = x_t - t v and one DDIM step is one Euler step), plus the schedules that
make each method what it is (PD's rounds, CD's EMA target, DMD2's two time-scale updates and
backward simulation)."""

from __future__ import annotations

import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.diffusion.methods.consistency import ConsistencyDistillation
from anydistill.diffusion.methods.dmd import DMD
from anydistill.diffusion.methods.dmd2 import DMD2
from anydistill.diffusion.methods.progressive import ProgressiveDistillation
from anydistill.diffusion.methods.reflow import Reflow
from anydistill.diffusion.methods.train_teacher import DiffusionTeacherTraining
from anydistill.models.flow_denoisers import mlp_flow_denoiser


def denoiser(seed: int, num_classes: int = 0):
    torch.manual_seed(seed)
    return mlp_flow_denoiser((2,), num_classes, hidden=16, depth=1, time_embedding=8)


def perturb(model, seed: int, scale: float = 0.1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def v(model, x, t):
    with torch.no_grad():
        return model(x, t.float())


BATCH = {"x": torch.randn(16, 2, generator=torch.Generator().manual_seed(5)), "y": torch.zeros(16, dtype=torch.long)}


def test_progressive_loss_matches_two_euler_steps_by_hand() -> None:
    teacher = denoiser(0)
    method = ProgressiveDistillation(denoiser(1), Teacher(teacher), teacher_steps=8, student_steps=2)
    method.setup("fit")
    perturb(method.student, 7)
    torch.manual_seed(3)
    loss = method.loss(BATCH)

    torch.manual_seed(3)
    n = 4  # round 0: the student takes teacher_steps / 2 steps
    index = torch.randint(n, (16,))
    eps = torch.randn(16, 2)
    t = (1 - index.double() / n).float()
    x0 = BATCH["x"]
    x_t = (1 - t)[:, None] * x0 + t[:, None] * eps
    t_mid, t_next = t - 1 / (2 * n), t - 1 / n
    x_mid = x_t + (t_mid - t)[:, None] * v(teacher, x_t, t)
    x_next = x_mid + (t_next - t_mid)[:, None] * v(teacher, x_mid, t_mid)
    velocity = (x_next - x_t) / (t_next - t)[:, None]  # the one student step that lands on x_next
    x_target = x_t - t[:, None] * velocity
    x_student = x_t - t[:, None] * v(method.student, x_t, t)
    weight = ((1 - t) ** 2 / t**2).clamp(min=1)
    expected = (weight * (x_student - x_target).pow(2).mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_progressive_rounds_halve_the_steps() -> None:
    method = ProgressiveDistillation(denoiser(1), None, teacher_steps=16, student_steps=2, epochs_per_round=3)
    assert method.rounds == 3
    with pytest.raises(ValueError, match="power of two"):
        ProgressiveDistillation(denoiser(1), None, teacher_steps=12, student_steps=2)
    assert method.recipe_problems(teacher_shapes={}, student_shapes={}, max_epochs=8)
    assert not method.recipe_problems(teacher_shapes={}, student_shapes={}, max_epochs=9)


def test_consistency_loss_matches_heun_step_and_ema_target_by_hand() -> None:
    teacher = denoiser(0)
    method = ConsistencyDistillation(denoiser(1), Teacher(teacher), num_scales=5)
    method.setup("fit")
    perturb(method.student, 7)
    perturb(method.target, 8)
    torch.manual_seed(3)
    loss = method.loss(BATCH)

    torch.manual_seed(3)
    grid = torch.linspace(1, 0, 5)
    n = torch.randint(4, (16,))
    eps = torch.randn(16, 2)
    t_next, t_cur = grid[n], grid[n + 1]
    x_next = (1 - t_next)[:, None] * BATCH["x"] + t_next[:, None] * eps
    h = (t_cur - t_next)[:, None]
    d = v(teacher, x_next, t_next)
    d2 = v(teacher, x_next + h * d, t_cur)
    x_cur = x_next + h * (d + d2) / 2
    target = x_cur - t_cur[:, None] * v(method.target, x_cur, t_cur)
    online = x_next - t_next[:, None] * v(method.student, x_next, t_next)
    assert loss.item() == pytest.approx((online - target).pow(2).mean().item(), rel=1e-4)


def test_consistency_target_is_an_ema_of_the_student(monkeypatch) -> None:
    from types import SimpleNamespace

    method = ConsistencyDistillation(denoiser(1), Teacher(denoiser(0)), ema_decay=0.9)
    method.setup("fit")
    before = [p.clone() for p in method.target.parameters()]
    perturb(method.student, 3)
    monkeypatch.setattr(ConsistencyDistillation, "trainer", property(lambda self: SimpleNamespace(global_step=1)))  # a step was taken
    method.on_train_batch_end(None, None, 0)
    for old, new, online in zip(before, method.target.parameters(), method.student.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)
    assert not any(p.requires_grad for p in method.target.parameters())


def test_consistency_ema_moves_once_per_optimizer_step_under_accumulation(monkeypatch) -> None:
    import lightning as L

    import anydistill.diffusion.methods.consistency as consistency
    from anydistill.data.toy2d import Toy2DData

    calls = []
    monkeypatch.setattr(consistency, "ema_update", lambda *args: calls.append(1))
    method = ConsistencyDistillation(denoiser(1), Teacher(denoiser(0)), num_scales=4)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(method, datamodule=Toy2DData(num_train=64, num_val=16, num_test=16, batch_size=16))
    assert trainer.global_step == 2 and len(calls) == 2  # 4 micro-batches, 2 optimizer steps, 2 EMA updates


@pytest.mark.parametrize("loss_name", ["l2", "pseudo-huber"])
def test_reflow_loss_matches_straight_path_regression_by_hand(loss_name: str) -> None:
    method = Reflow(denoiser(1), None, loss=loss_name)
    method.setup("fit")
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(9))
    batch = {"x": BATCH["x"], "z": z}
    torch.manual_seed(3)
    loss = method.loss(batch)

    torch.manual_seed(3)
    t = torch.rand(16, dtype=torch.float64).float()
    x_t = (1 - t)[:, None] * BATCH["x"] + t[:, None] * z
    residual = v(method.student, x_t, t) - (z - BATCH["x"])
    if loss_name == "l2":
        expected = residual.pow(2).mean()
    else:
        c = 0.00054 * 2
        expected = ((residual.pow(2).sum(1) + c**2).sqrt() - c).mean() / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_dmd_generator_losses_match_hand_computation() -> None:
    teacher = denoiser(0)
    method = DMD(denoiser(1), Teacher(teacher), t_low=0.02, t_high=0.98)
    method.setup("fit")
    perturb(method.fake, 4)  # at initialisation fake == real and the gradient is 0
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    pairs = {"z": torch.randn(16, 2, generator=torch.Generator().manual_seed(2)), "x": BATCH["x"]}
    torch.manual_seed(3)
    loss_dm, loss_reg, x = method.generator_losses(pairs, z)

    one = torch.ones(16)
    x_hand = z - v(method.student, z, one)  # G(z): x0 from pure noise at t = 1
    torch.testing.assert_close(x.detach(), x_hand)
    torch.manual_seed(3)
    t = (0.02 + 0.96 * torch.rand(16, dtype=torch.float64)).float()
    noise = torch.randn(16, 2)
    x_t = (1 - t)[:, None] * x_hand + t[:, None] * noise
    x0_real = x_t - t[:, None] * v(teacher, x_t, t)
    x0_fake = x_t - t[:, None] * v(method.fake, x_t, t)
    grad = (x0_fake - x0_real) / (x_hand - x0_real).abs().mean(1, keepdim=True)
    assert loss_dm.item() == pytest.approx(0.5 * grad.pow(2).mean().item(), rel=1e-4)
    x_ref = pairs["z"] - v(method.student, pairs["z"], one)
    assert loss_reg.item() == pytest.approx((x_ref - pairs["x"]).pow(2).mean().item(), rel=1e-5)
    # and the surrogate's gradient w.r.t. the samples is grad / numel (DMD2's mean reduction)
    x_leaf = x.detach().requires_grad_(True)
    from anydistill.diffusion.targets import dmd_surrogate_loss

    dmd_surrogate_loss(x_leaf, grad, reduction="mean").backward()
    torch.testing.assert_close(x_leaf.grad, grad / grad.numel())


def test_dmd2_backward_simulation_runs_the_generator_itself() -> None:
    method = DMD2(denoiser(1), Teacher(denoiser(0)), num_steps=4)
    method.setup("fit")
    assert method.times == [1.0, 0.75, 0.5, 0.25]
    torch.manual_seed(3)
    x_in = method.generator_input(2, BATCH["x"], None)
    torch.manual_seed(3)
    x = torch.randn(16, 2)  # pure noise at t = 1
    for t, s in ((1.0, 0.75), (0.75, 0.5)):
        x0 = x - t * v(method.student, x, torch.full((16,), t))
        x = (1 - s) * x0 + s * torch.randn(16, 2)
    torch.testing.assert_close(x_in, x)
    noised = DMD2(denoiser(1), Teacher(denoiser(0)), num_steps=4, student_inputs="noised-data")
    noised.setup("fit")
    torch.manual_seed(3)
    x_data = noised.generator_input(2, BATCH["x"], None)
    torch.manual_seed(3)
    torch.testing.assert_close(x_data, 0.5 * BATCH["x"] + 0.5 * torch.randn(16, 2))


def test_dmd2_two_time_scale_updates_the_generator_every_fifth_iteration(tmp_path) -> None:
    import lightning as L

    from anydistill.data.toy2d import Toy2DData

    method = DMD2(denoiser(1, 0), Teacher(denoiser(0)), update_ratio=5)
    data = Toy2DData(num_train=160, num_val=16, num_test=16, batch_size=16)
    snapshots = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots.append(([p.clone() for p in module.student.parameters()], [p.clone() for p in module.fake.parameters()]))

    trainer = L.Trainer(max_epochs=1, limit_train_batches=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[Watch()])
    trainer.fit(method, datamodule=data)
    changed_student = [not all(torch.equal(a, b) for a, b in zip(snapshots[i][0], snapshots[i - 1][0])) for i in range(1, 6)]
    changed_fake = [not all(torch.equal(a, b) for a, b in zip(snapshots[i][1], snapshots[i - 1][1])) for i in range(1, 6)]
    assert changed_student == [False, False, False, False, True]  # iterations 1..5: only the 5th is a generator turn
    assert all(changed_fake)


def test_diffusion_teacher_loss_is_flow_matching_with_label_dropout() -> None:
    model = denoiser(1, num_classes=3)
    method = DiffusionTeacherTraining(model, label_dropout=0.0)
    method.setup("fit")
    batch = {"x": BATCH["x"], "y": torch.arange(16) % 3}
    torch.manual_seed(3)
    loss = method._loss(batch, 0.0)
    torch.manual_seed(3)
    t = torch.rand(16, dtype=torch.float64).float()
    eps = torch.randn(16, 2)
    x_t = (1 - t)[:, None] * BATCH["x"] + t[:, None] * eps
    with torch.no_grad():
        out = model(x_t, t, batch["y"])
    assert loss.item() == pytest.approx((out - (eps - BATCH["x"])).pow(2).mean().item(), rel=1e-5)
    from anydistill.diffusion.common import drop_labels

    torch.manual_seed(0)
    dropped = drop_labels(torch.zeros(10000, dtype=torch.long), 0.1, 3)
    assert abs(float((dropped == 3).float().mean()) - 0.1) < 0.01
