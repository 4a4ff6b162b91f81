"""DMD2's GAN term: a size-independent weight (`gan_scale: per-dimension`), and the discriminator
reading the fake score through its preconditioning (EDM: the network sees c_in x_t and c_noise)."""

from __future__ import annotations

import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.diffusion.methods.dmd2 import DMD2, gan_weight
from anydistill.diffusion.schedules import EDM
from anydistill.models.flow_denoisers import mlp_flow_denoiser


@pytest.mark.parametrize("size", [2, 64, 12288])
def test_per_dimension_weight_gives_the_same_balance_at_every_size(size) -> None:
    """d(loss)/d(one sample's GAN loss) / d(loss)/d(one element's DM loss) is the weight at every size per
    dimension, and weight x size per sample (the official reduction)."""
    for scale, expected in (("per-dimension", 0.5), ("per-sample", 0.5 * size)):
        dm, gan = torch.zeros(4, size, requires_grad=True), torch.zeros(4, requires_grad=True)
        (dm.mean() + gan_weight(0.5, scale, size) * gan.mean()).backward()
        assert (gan.grad[0] / dm.grad[0, 0]).item() == pytest.approx(expected, rel=1e-6)


def test_the_discriminator_sees_the_preconditioned_input() -> None:
    torch.manual_seed(0)
    build = lambda: mlp_flow_denoiser((2,), 0, schedule="edm", prediction="x0", preconditioning="edm", hidden=16, depth=2)  # noqa: E731
    method = DMD2(build(), Teacher(build()))
    method.setup("fit")
    seen = []
    method.fake.net.register_forward_pre_hook(lambda module, args: seen.append((args[0].clone(), args[1].clone())))
    torch.manual_seed(1)
    x = torch.randn(8, 2)
    method.discriminate(x, None)
    (x_in, t_in), schedule = seen[-1], EDM()
    torch.manual_seed(1)  # the same draws: the data, the time, then the noise
    from anydistill.diffusion.timesteps import UniformTime

    torch.randn(8, 2)
    t = UniformTime().sample(8, schedule, generator=None, device=x.device)
    x_t = schedule.add_noise(x, schedule.sample_noise(x, None), t)
    torch.testing.assert_close(x_in, schedule.c_in(t)[:, None] * x_t)
    torch.testing.assert_close(t_in, schedule.c_noise(t))


def test_karras_time_is_dmd2s_grid() -> None:
    """1,000 levels, rho 7, sigma 0.002 .. 80; DM indices 20 .. 980, critic 0 .. 999 (edm_guidance.py)."""
    from anydistill.diffusion.timesteps import KarrasTime

    grid = KarrasTime().sigmas()
    ramp = torch.linspace(0, 1, 1000, dtype=torch.float64)
    official = ((80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7).flip(0)
    torch.testing.assert_close(grid, official, rtol=1e-12, atol=0)
    t = KarrasTime(low=0.02, high=0.98).sample(50_000, EDM(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    index = torch.searchsorted(grid, t)
    assert index.min().item() == 20 and index.max().item() == 980
    assert 2.0 < KarrasTime().sample(50_000, EDM(), generator=torch.Generator().manual_seed(1)).median().item() < 3.1


def test_official_fake_score_loss_on_fixed_tensors() -> None:
    """fake_score_loss(KarrasTime, edm) = mean((sigma^-2 + sigma_d^-2) (D(x + sigma eps) - x)^2), DMD2's compute_loss_fake."""
    from anydistill.diffusion.distribution_matching import fake_score_loss
    from anydistill.diffusion.teacher import network_output
    from anydistill.diffusion.timesteps import KarrasTime

    torch.manual_seed(0)
    fake = mlp_flow_denoiser((2,), 0, schedule="edm", prediction="x0", preconditioning="edm", hidden=16, depth=2).double()
    x, schedule = torch.randn(16, 2, dtype=torch.float64), EDM()
    torch.manual_seed(3)
    ours = fake_score_loss(fake, schedule, x, None, times=KarrasTime(), weighting="edm")
    torch.manual_seed(3)  # the same draws: the level, then the noise
    sigma = KarrasTime().sample(16, schedule, generator=None).double()  # drawn in fp32, as fake_score_loss draws it
    x_t = x + sigma[:, None] * torch.randn(16, 2, dtype=torch.float64)
    weight = sigma**-2 + 1 / 0.5**2
    official = (weight[:, None] * (network_output(fake, schedule, x_t, sigma, None, "edm") - x) ** 2).mean()
    torch.testing.assert_close(ours, official, rtol=1e-6, atol=0)  # the loss forms its coefficients from fp32 times


def test_edm_fake_weighting_needs_an_edm_x0_model() -> None:
    from anydistill.catalog import load_recipe
    from anydistill.core.errors import RecipeError

    recipe = {"name": "w", "data": {"name": "toy2d", "num_train": 256}, "teacher": {"name": "mlp-denoiser", "hidden": 16, "depth": 1},
              "student": {"name": "mlp-denoiser", "hidden": 16, "depth": 1}, "methods": {"dmd2": {"fake_weighting": "edm"}}}
    with pytest.raises(RecipeError, match="fake_weighting: edm weights an x0 loss"):
        load_recipe(recipe)


def test_official_optimisation_options() -> None:
    """The recipe's optimizer (AdamW here), gradient clipping of each network, uniform generator classes."""
    import lightning as L

    from anydistill.core.recipe import OptimizerSpec
    from anydistill.data.toy2d import Toy2DConditionalData

    build = lambda: mlp_flow_denoiser((2,), 8, hidden=16, depth=2)  # noqa: E731
    method = DMD2(build(), Teacher(build()), OptimizerSpec(name="adamw", lr=1e-3, weight_decay=0.01), update_ratio=1,
                  generator_labels="uniform", max_grad_norm=1e-3)
    norms, labels = [], []
    real_step = method.step

    def watched(optimizer, loss, parameters):
        parameters = list(parameters)
        assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.01
        real_step(optimizer, loss, parameters)
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None])).item())

    method.step = watched
    original = method.generator_input
    method.generator_input = lambda k, real, cond: (labels.append(cond.clone()), original(k, real, cond))[1]
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    data = Toy2DConditionalData(num_train=64, num_val=16, num_test=16, batch_size=32)
    trainer.fit(method, datamodule=data)
    assert len(norms) == 4 and max(norms) <= 1e-3 * (1 + 1e-5)  # 2 batches: generator and critic each, clipped
    drawn = torch.cat(labels)
    assert drawn.min() >= 0 and drawn.max() < 8 and not torch.equal(drawn[:32], data.split("train")[1][:32])


def test_init_from_an_export_starts_generator_and_fake_there_with_an_analytic_teacher(tmp_path) -> None:
    """An exact teacher has no weights: ``init_from`` starts both networks from a student export, and a
    file of another architecture, or no file, is refused in one line."""
    from safetensors.torch import save_file

    from anydistill.diffusion.analytic_mixture import analytic_mixture

    build = lambda hidden=16: mlp_flow_denoiser((2,), 0, schedule="rectified-flow", prediction="velocity", hidden=hidden, depth=2)  # noqa: E731
    torch.manual_seed(3)
    trained = build()
    save_file(trained.state_dict(), str(tmp_path / "model.safetensors"))
    method = DMD2(build(), Teacher(analytic_mixture((2,), 0)), init_from=str(tmp_path / "model.safetensors"))
    assert not method.starts_from_teacher()
    method.setup("fit")
    for name, value in trained.state_dict().items():
        assert torch.equal(method.student.state_dict()[name], value) and torch.equal(method.fake.state_dict()[name], value)
    with pytest.raises(ValueError, match="not a file"):
        DMD2(build(), Teacher(analytic_mixture((2,), 0)), init_from=str(tmp_path / "missing.safetensors"))
    other = DMD2(build(hidden=8), Teacher(analytic_mixture((2,), 0)), init_from=str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not an export of the student's architecture"):
        other.setup("fit")
