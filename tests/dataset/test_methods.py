"""DC, DM and MTT in the engine: one pixel step against a hand computation of each paper's loss,
resume, and the determinism of the draws."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from anydistill.dataset.convnet import convnet
from anydistill.dataset.methods.dc import DC, official_loops
from anydistill.dataset.methods.dm import DM
from anydistill.dataset.methods.mtt import MTT
from anydistill.dataset.synset import synthetic_set
from anydistill.data.digits import DigitsData

WIDTH, DEPTH = 16, 3


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    data = DigitsData()
    data.setup()
    return data


def trainer(max_epochs: int = 1, max_steps: int = -1, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False, **kwargs)


def attached(method, data: DigitsData, seed: int = 0):
    L.seed_everything(seed, verbose=False)
    method.attach_data(data)
    return method


def net_drawn_like_the_method(method, generator: torch.Generator) -> torch.nn.Module:
    """The ConvNet `fresh_net` builds from this generator state, rebuilt independently."""
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    return convnet(1, 10, (8, 8), width=WIDTH, depth=DEPTH)


def pixel_step_matches(method, hand_loss, data: DigitsData, lr: float) -> None:
    """After one step from fresh SGD state, images = before - lr * d(hand_loss)/d(images)."""
    before = method.student.images.detach().clone()
    images = before.clone().requires_grad_(True)
    expected_grad = torch.autograd.grad(hand_loss(images), images)[0]
    trainer(max_steps=1).fit(method)
    assert torch.allclose(method.student.images.detach(), before - lr * expected_grad, atol=1e-5, rtol=1e-4)
    assert expected_grad.abs().sum() > 0


def test_dm_step_is_the_mean_embedding_distance(digits) -> None:
    method = attached(DM(synthetic_set((1, 8, 8), 10, ipc=2), dsa_strategy="none", net_width=WIDTH, batch_real=32), digits)

    def hand_loss(images):
        generator = method.generator(0)
        net = net_drawn_like_the_method(method, generator)
        total = 0
        for c in range(10):
            members = (method.real_y == c).nonzero().flatten()
            real = method.real_x[members[torch.randperm(len(members), generator=generator)[:32]]]
            total = total + ((net.embed(real).mean(0) - net.embed(images[2 * c : 2 * c + 2]).mean(0)) ** 2).sum()
        return total

    pixel_step_matches(method, hand_loss, digits, lr=1.0)


def test_dc_step_is_the_layerwise_gradient_distance(digits) -> None:
    method = attached(DC(synthetic_set((1, 8, 8), 10, ipc=1, init="noise"), net_width=WIDTH, batch_real=16), digits)
    assert (method.outer_loop, method.inner_loop) == official_loops(1)[:2] == (1, 1)

    def distance(g_syn, g_real):  # sum over output rows of 1 - cos, biases skipped (DC's "ours")
        if g_syn.dim() == 1:
            return 0
        a, b = g_syn.reshape(len(g_syn), -1), g_real.reshape(len(g_real), -1)
        return (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)).sum()

    def hand_loss(images):
        generator = method.generator(0)
        net = net_drawn_like_the_method(method, generator)
        params = list(net.parameters())
        total = 0
        for c in range(10):
            members = (method.real_y == c).nonzero().flatten()
            real = method.real_x[members[torch.randperm(len(members), generator=generator)[:16]]]
            g_real = torch.autograd.grad(F.cross_entropy(net(real), torch.full((len(real),), c)), params)
            g_syn = torch.autograd.grad(F.cross_entropy(net(images[c : c + 1]), torch.tensor([c])), params, create_graph=True)
            total = total + sum(distance(s, r.detach()) for s, r in zip(g_syn, g_real))
        return total

    pixel_step_matches(method, hand_loss, digits, lr=0.1)


def test_mtt_step_is_the_normalised_trajectory_distance(digits, tmp_path) -> None:
    synset = synthetic_set((1, 8, 8), 10, ipc=1, learn_lr=True, initial_lr=0.02)
    method = MTT(synset, dsa_strategy="none", net_width=WIDTH, num_experts=1, expert_train_epochs=2, max_start_epoch=1,
                 expert_epochs=2, syn_steps=1, lr_images=10.0, buffer_dir=str(tmp_path / "experts"))
    attached(method, digits)
    start, target = method.buffer.segment(0, 0, 2)
    assert not torch.equal(start, target)  # the expert trained

    def hand_loss(images):
        net = convnet(1, 10, (8, 8), width=WIDTH, depth=DEPTH)
        torch.nn.utils.vector_to_parameters(start.clone(), net.parameters())
        params = list(net.parameters())
        ce = F.cross_entropy(net(images), torch.arange(10))
        grads = torch.autograd.grad(ce, params, create_graph=True)
        stepped = torch.cat([(p - 0.02 * g).reshape(-1) for p, g in zip(params, grads)])
        return ((stepped - target) ** 2).sum() / ((start - target) ** 2).sum()

    lr_before = float(synset.lr.detach())
    pixel_step_matches(method, hand_loss, digits, lr=10.0)
    assert float(synset.lr.detach()) != lr_before  # the step size learns too


def test_experts_are_built_once_and_reused(digits, tmp_path) -> None:
    settings = dict(dsa_strategy="none", net_width=WIDTH, num_experts=1, expert_train_epochs=2, max_start_epoch=1,
                    expert_epochs=1, buffer_dir=str(tmp_path / "experts"))
    first = attached(MTT(synthetic_set((1, 8, 8), 10, ipc=1), **settings), digits)
    shard = next((tmp_path / "experts").rglob("expert-*.safetensors"))
    written = shard.stat().st_mtime_ns
    second = attached(MTT(synthetic_set((1, 8, 8), 10, ipc=1), **settings), digits)
    assert shard.stat().st_mtime_ns == written
    assert second.buffer.directory == first.buffer.directory


def test_mtt_alpha_starts_at_syn_lr_init(digits, tmp_path) -> None:
    settings = dict(dsa_strategy="none", net_width=WIDTH, num_experts=1, expert_train_epochs=2, max_start_epoch=1,
                    expert_epochs=1, buffer_dir=str(tmp_path / "experts"))
    method = attached(MTT(synthetic_set((1, 8, 8), 10, ipc=1, learn_lr=True), syn_lr_init=0.25, **settings), digits)
    assert float(method.student.lr) == pytest.approx(0.25)
    default = attached(MTT(synthetic_set((1, 8, 8), 10, ipc=1, learn_lr=True, initial_lr=0.02), **settings), digits)
    assert float(default.student.lr) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="syn_lr_init"):
        MTT(synthetic_set((1, 8, 8), 10, ipc=1), syn_lr_init=0.0)


def test_resume_continues_exactly(digits, tmp_path) -> None:
    def method():
        return attached(DM(synthetic_set((1, 8, 8), 10, ipc=1), net_width=WIDTH, batch_real=16, iterations_per_epoch=3), digits)

    straight = method()
    trainer(max_epochs=2).fit(straight)

    first = method()
    interrupted = trainer(max_epochs=1)
    interrupted.fit(first)
    interrupted.save_checkpoint(tmp_path / "epoch0.ckpt")
    resumed = method()
    trainer(max_epochs=2).fit(resumed, ckpt_path=tmp_path / "epoch0.ckpt")
    assert torch.equal(resumed.student.images, straight.student.images)


def test_init_follows_the_student_spec(digits) -> None:
    real = attached(DM(synthetic_set((1, 8, 8), 10, ipc=2)), digits)
    rows = {tuple(r.flatten().tolist()) for r in digits.split("train")[0]}
    assert all(tuple(image.flatten().tolist()) in rows for image in real.student.images.detach())
    noise = attached(DM(synthetic_set((1, 8, 8), 10, ipc=2, init="noise")), digits)
    assert not any(tuple(image.flatten().tolist()) in rows for image in noise.student.images.detach())


def test_wrong_student_is_refused() -> None:
    with pytest.raises(TypeError, match="synthetic-set"):
        DM(torch.nn.Linear(2, 2))
