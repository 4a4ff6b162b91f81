"""Flash-DMD: the cleaner steps train by the GAN alone and the noisier by DM, the fake score is pulled
towards the generator by fake_ema, the reward is maximised (alone with distill: false), and bad
settings are refused in one line."""

from __future__ import annotations

import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.data.toy2d import Toy2DData
from anydistill.diffusion.common import predict
from anydistill.diffusion.methods.dmd2 import gan_weight
from anydistill.diffusion.methods.flash_dmd import FlashDMD, build_reward
from anydistill.models.flow_denoisers import mlp_flow_denoiser


def tiny(seed: int):
    torch.manual_seed(seed)
    return mlp_flow_denoiser((2,), 0, hidden=16, depth=1, time_embedding=8)


def method(**options) -> FlashDMD:
    m = FlashDMD(tiny(1), Teacher(tiny(0)), num_steps=4, **options)
    m.setup("fit")
    m.log_train = lambda *args, **kwargs: None
    return m


def test_clean_steps_train_by_the_gan_alone_and_noisy_ones_by_dm() -> None:
    m = method(adversarial_steps=1, gan_weight_generator=0.5, gan_weight_discriminator=0.5)
    x = predict(m.student, torch.randn(8, 2), torch.full((8,), m.times[3]), None, "x0")
    assert [m.generator_gan_applies(k) for k in range(4)] == [True, True, True, False]
    real = torch.randn(8, 2)
    torch.manual_seed(3)
    loss = m.generator_objective(x, None, 3, real)
    torch.manual_seed(3)
    expected = gan_weight(0.5, "per-sample", 2) * m.discriminator.generator_loss(m.fake, x, None)
    torch.testing.assert_close(loss, expected)


def test_fake_ema_pulls_the_fake_score_towards_the_generator() -> None:
    m = method(adversarial_steps=0, fake_ema=0.75)
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in m.fake.parameters()]
    m.after_generator_step()
    for old, new, own in zip(before, m.fake.parameters(), m.student.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * own)


def test_reward_only_tuning_maximises_the_reward_alone() -> None:
    data = Toy2DData(num_train=512, num_val=32, num_test=64)
    data.setup()
    m = FlashDMD(tiny(1), Teacher(tiny(0)), num_steps=4, adversarial_steps=0, reward="mode-preference", reward_weight=2.0, distill=False)
    m.reward_model = build_reward("mode-preference", data, [0, 1])
    m.setup("fit")
    m.log_train = lambda *args, **kwargs: None
    x = torch.randn(16, 2, requires_grad=True)
    torch.testing.assert_close(m.generator_objective(x, None, 0, x), -2.0 * m.reward_model(x, None).mean())
    proxy = build_reward("proxy", data, [0, 1])
    on_data = data.split("train")[0][:256]
    assert (proxy(on_data) - m.reward_model(on_data)).abs().mean() < 0.1  # the proxy agrees on the data


def test_reward_only_tuning_updates_the_generator_every_iteration_and_no_critic() -> None:
    """Without distillation the fake score and discriminator have no use: they stay as they were, and
    the generator takes every iteration (not one in update_ratio)."""
    import lightning as L

    m = FlashDMD(tiny(1), Teacher(tiny(0)), num_steps=4, adversarial_steps=0, reward="mode-preference", reward_weight=1.0,
                 distill=False, update_ratio=2)
    steps = []
    real_step = m.step
    m.step = lambda optimizer, loss, parameters: (steps.append(optimizer), real_step(optimizer, loss, parameters))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(m, datamodule=Toy2DData(num_train=128, num_val=16, num_test=16, batch_size=32))
    before = tiny(0).state_dict()  # the fake score starts as the teacher's copy
    assert len(steps) == 4 and all(o is steps[0] for o in steps)  # the generator's optimizer, every iteration
    assert all(torch.equal(before[k], v) for k, v in m.fake.state_dict().items())


@pytest.mark.parametrize(("options", "message"), [
    ({"adversarial_steps": 4}, "must leave DM steps"),
    ({"adversarial_steps": 1, "gan_weight_generator": 0.0}, "need the GAN"),
    ({"reward": "proxy"}, "reward and reward_weight"),
    ({"adversarial_steps": 0, "distill": False}, "reward alone"),
])
def test_bad_settings_are_refused(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        FlashDMD(tiny(1), Teacher(tiny(0)), num_steps=4, **options)
