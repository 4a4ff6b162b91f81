"""The standard evaluation protocol: train fresh models on a small set, test on real data."""

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from anydistill.dataset import protocol as protocol_module
from anydistill.dataset.convnet import convnet
from anydistill.dataset.coresets import random_subset
from anydistill.dataset.protocol import EvalProtocol, evaluate_set, gap_closed, train_and_test

NO_FLIP = "color_crop_cutout_scale_rotate"  # digits are not flip-invariant


@pytest.fixture(scope="module")
def digits():
    """sklearn digits in [-1, 1]: 10 images per class from a 1000-image train split, 797 held out."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1000], perm[1000:]
    idx = train[random_subset(y[train], 10, torch.Generator().manual_seed(1))]
    return x[idx], y[idx], x[test], y[test]


def _model(seed=0):
    torch.manual_seed(seed)
    return convnet(1, 10, 8, width=16, depth=2)


@pytest.mark.parametrize("dsa", [None, NO_FLIP])
def test_tiny_convnet_learns_digits_from_ten_images_per_class(digits, dsa):
    train_x, train_y, test_x, test_y = digits
    protocol = EvalProtocol(epochs=50, dsa_strategy=dsa)
    accuracy = train_and_test(_model(), train_x, train_y, test_x, test_y, protocol, torch.Generator().manual_seed(0))
    assert accuracy > 0.5  # chance is 0.1; about 0.75 here


def test_defaults_are_the_dsa_evaluation():
    p = EvalProtocol()
    assert (p.epochs, p.lr, p.momentum, p.weight_decay, p.batch_size, p.lr_decay) == (1000, 0.01, 0.9, 5e-4, 256, 0.1)
    assert p.dsa_strategy == "color_crop_cutout_flip_scale_rotate" and p.augmenter().strategy == p.dsa_strategy
    # Official: range(1000 + 1) passes, decay after pass 1000 // 2 + 1 = 501.
    schedule = p.lr_schedule()
    assert len(schedule) == 1001 and p.decay_epoch == 501
    assert schedule.count(0.01) == 502 and all(lr == pytest.approx(0.001) for lr in schedule[502:])
    assert EvalProtocol(dsa_strategy=None).augmenter() is None and EvalProtocol(dsa_strategy="none").augmenter() is None


def test_lr_decays_at_half_the_epochs_with_a_fresh_optimizer(digits, monkeypatch):
    built, step_lrs = [], []

    class SpySGD(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            built.append(kwargs)

        def step(self, closure=None):
            step_lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(protocol_module, "SGD", SpySGD)
    train_x, train_y, test_x, test_y = digits
    protocol = EvalProtocol(epochs=6, lr=0.02, batch_size=40, dsa_strategy=None)
    train_and_test(_model(), train_x, train_y, test_x, test_y, protocol, torch.Generator().manual_seed(0))

    # 7 passes of ceil(100 / 40) = 3 steps; passes 0..4 (decay after pass 6 // 2 + 1 = 4) at 0.02.
    expected = [lr for lr in protocol.lr_schedule() for _ in range(3)]
    assert step_lrs == pytest.approx(expected)
    assert step_lrs[: 5 * 3] == [0.02] * 15 and step_lrs[15:] == pytest.approx([0.002] * 6)
    # The official code rebuilds SGD at the decay, which resets the momentum buffers.
    assert len(built) == 2
    assert built[0] == {"lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4}
    assert built[1]["lr"] == pytest.approx(0.002) and built[1]["momentum"] == 0.9


@pytest.mark.parametrize("dsa", [None, NO_FLIP])
def test_one_hot_soft_labels_equal_hard_labels(digits, dsa):
    train_x, train_y, test_x, test_y = digits
    protocol = EvalProtocol(epochs=10, batch_size=32, dsa_strategy=dsa)
    hard, soft = _model(), _model()
    acc_hard = train_and_test(hard, train_x, train_y, test_x, test_y, protocol, torch.Generator().manual_seed(3))
    acc_soft = train_and_test(
        soft, train_x, F.one_hot(train_y, 10).float(), test_x, test_y, protocol, torch.Generator().manual_seed(3)
    )
    assert acc_hard == acc_soft
    for a, b in zip(hard.parameters(), soft.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_soft_labels_change_the_result(digits):
    train_x, train_y, test_x, test_y = digits
    protocol = EvalProtocol(epochs=3, dsa_strategy=None)
    smooth = 0.8 * F.one_hot(train_y, 10).float() + 0.02
    a, b = _model(), _model()
    train_and_test(a, train_x, train_y, test_x, test_y, protocol, torch.Generator().manual_seed(0))
    train_and_test(b, train_x, smooth, test_x, test_y, protocol, torch.Generator().manual_seed(0))
    assert not torch.equal(a.classifier.weight, b.classifier.weight)


def test_the_training_set_is_left_untouched(digits):
    train_x, train_y, test_x, test_y = digits
    synthetic = train_x.clone().requires_grad_(True)
    train_and_test(_model(), synthetic, train_y, test_x, test_y, EvalProtocol(epochs=2, dsa_strategy=NO_FLIP))
    assert synthetic.grad is None and torch.equal(synthetic.detach(), train_x)


def test_evaluate_set_returns_k_accuracies_with_their_mean_and_std(digits):
    train_x, train_y, test_x, test_y = digits
    protocol = EvalProtocol(epochs=4, dsa_strategy=None, num_models=3)
    state = torch.get_rng_state()
    mean, std, accuracies = evaluate_set(lambda: convnet(1, 10, 8, width=8, depth=2), *digits, protocol)
    assert torch.equal(torch.get_rng_state(), state)  # model seeding does not leak into the global RNG
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)
    assert mean == pytest.approx(sum(accuracies) / 3)
    assert std == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in accuracies) / 3))  # population std
    assert len(set(accuracies)) > 1  # different seeds, different models
    # None means seeds 0..K-1; the same seeds give the same accuracies.
    assert evaluate_set(lambda: convnet(1, 10, 8, width=8, depth=2), *digits, protocol, seeds=[0, 1, 2])[2] == accuracies
    # An int s means s..s+K-1; an explicit sequence sets K.
    shifted = evaluate_set(lambda: convnet(1, 10, 8, width=8, depth=2), *digits, protocol, seeds=1)[2]
    assert shifted[:2] == accuracies[1:]
    two = evaluate_set(lambda: convnet(1, 10, 8, width=8, depth=2), *digits, protocol, seeds=[7, 8])
    assert len(two[2]) == 2
    with pytest.raises(ValueError, match="'seeds'"):
        evaluate_set(lambda: convnet(1, 10, 8), *digits, protocol, seeds=[])


def test_non_image_inputs_without_augmentation():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.arange(40) % 2
    x[y == 1] += 3.0
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    assert train_and_test(model, x, y, x, y, EvalProtocol(epochs=40, lr=0.1, dsa_strategy=None), g) > 0.9


def test_gap_closed():
    assert gap_closed(0.8, 0.6, 1.0) == pytest.approx(0.5)
    assert gap_closed(0.6, 0.6, 0.9) == 0.0
    assert gap_closed(0.5, 0.6, 0.8) == pytest.approx(-0.5)
    assert gap_closed(95.0, 65.0, 99.0) == pytest.approx(30.0 / 34.0)
    with pytest.raises(ValueError, match="undefined when the full-data and random-subset scores are equal"):
        gap_closed(0.7, 0.9, 0.9)
    with pytest.raises(ValueError, match="finite"):
        gap_closed(float("nan"), 0.1, 0.9)


def test_invalid_arguments_are_reported_together(digits):
    train_x, train_y, test_x, test_y = digits
    with pytest.raises(ValueError) as info:
        EvalProtocol(epochs=0, lr=-1.0, dsa_strategy="blur", num_models=0)
    message = str(info.value)
    assert all(name in message for name in ("'epochs'", "'lr'", "'dsa_strategy'", "'num_models'"))
    with pytest.raises(ValueError) as info:
        train_and_test(_model(), train_x.flatten(1), train_y[:-1], test_x, test_y.float(), EvalProtocol(epochs=1))
    message = str(info.value)
    assert "needs images [N, C, H, W]" in message and "'test_y'" in message and "'train_y'" in message
    with pytest.raises(ValueError, match="one probability per class"):
        train_and_test(_model(), train_x, torch.ones(100, 3) / 3, test_x, test_y, EvalProtocol(epochs=1, dsa_strategy=None))
