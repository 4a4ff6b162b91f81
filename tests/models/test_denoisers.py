"""Shapes, conditioning and sizes of the toy denoiser networks in `anydistill.models.denoisers`."""

import math

import pytest
import torch

from anydistill.models.denoisers import SinusoidalTimeEmbedding, conv_denoiser, mlp_denoiser


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.rand(shape[0], generator=g)


@pytest.mark.parametrize("dim", [2, 5])
def test_mlp_output_is_shaped_like_its_input(dim):
    torch.manual_seed(0)
    model = mlp_denoiser(dim, hidden=32, depth=2)
    x, t = _inputs((7, dim))
    assert model(x, t, None).shape == (7, dim)
    # a 0-dim time is shared by the whole batch
    torch.testing.assert_close(model(x, t[0], None), model(x, t[0].expand(7), None))


@pytest.mark.parametrize("channels", [1, 3])
def test_conv_output_is_shaped_like_its_input(channels):
    torch.manual_seed(0)
    model = conv_denoiser(channels, 8, width=8, num_classes=10)
    x, t = _inputs((4, channels, 8, 8))
    assert model(x, t, torch.tensor([0, 3, 9, 10])).shape == (4, channels, 8, 8)
    assert model.input_shape == (channels, 8, 8)


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: mlp_denoiser(2, hidden=32, depth=2, num_classes=4), (6, 2)),
        (lambda: conv_denoiser(1, 8, width=8, num_classes=4), (6, 1, 8, 8)),
    ],
    ids=["mlp", "conv"],
)
def test_conditioning_and_time_change_the_output_and_none_is_the_null_class(build, shape):
    torch.manual_seed(0)
    model = build()
    assert model.null_class == 4
    x, t = _inputs(shape)
    a = model(x, t, torch.zeros(6, dtype=torch.long))
    b = model(x, t, torch.ones(6, dtype=torch.long))
    assert (a - b).abs().max() > 1e-4
    assert (model(x, t.flip(0), torch.zeros(6, dtype=torch.long)) - a).abs().max() > 1e-4
    torch.testing.assert_close(model(x, t, None), model(x, t, torch.full((6,), 4)), rtol=0, atol=0)


def test_unconditional_nets_refuse_labels():
    model = mlp_denoiser(2, hidden=16, depth=1)
    assert model.null_class is None
    x, t = _inputs((3, 2))
    with pytest.raises(ValueError, match="num_classes=0"):
        model(x, t, torch.zeros(3, dtype=torch.long))


def test_bad_inputs_are_reported():
    model = mlp_denoiser(2, hidden=16, depth=1, num_classes=3)
    x, t = _inputs((3, 2))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        model(torch.randn(3, 4), t, None)
    with pytest.raises(ValueError, match="time input"):
        model(x, torch.rand(2), None)
    with pytest.raises(ValueError, match="'cond'"):
        model(x, t, torch.zeros(3))  # float labels
    with pytest.raises(ValueError, match="H and W even"):
        conv_denoiser(1, 8, width=8)(torch.randn(2, 1, 7, 7), torch.rand(2), None)


def test_default_parameter_counts_are_toy_sized():
    assert 0.5e6 < _n_params(mlp_denoiser()) < 1.5e6  # ~0.87M: 4 blocks of 3 x 256^2
    assert 0.1e6 < _n_params(conv_denoiser()) < 0.5e6  # ~0.29M, as the benchmark plan budgets


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    for model, shape in [
        (mlp_denoiser(2, hidden=16, depth=2, num_classes=3), (5, 2)),
        (conv_denoiser(1, 8, width=8, num_classes=3), (5, 1, 8, 8)),
    ]:
        x, t = _inputs(shape)
        model(x, t, torch.tensor([0, 1, 2, 3, 0])).square().sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert missing == []


def test_time_embedding_frequencies_and_resolution():
    emb = SinusoidalTimeEmbedding(64)
    assert emb.frequencies[0] == 1 and math.isclose(emb.frequencies[-1].item(), 1000, rel_tol=1e-5)
    assert emb(torch.rand(5)).shape == (5, 64)
    # distinct, well-separated features across [0, 1] and EDM's c_noise range at a 1e-3 step
    for lo, hi in [(0.0, 1.0), (math.log(0.002) / 4, math.log(80) / 4)]:
        s = torch.arange(lo, hi, 1e-3)
        gaps = (emb(s[1:]) - emb(s[:-1])).norm(dim=1)
        assert gaps.min() > 0.1
    assert "frequencies" not in emb.state_dict()  # derived, not saved


def test_builders_report_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        mlp_denoiser(0, hidden=-1, depth=1.5, num_classes=-2, time_embedding=7)
    message = str(info.value)
    for name in ("dim", "hidden", "depth", "num_classes", "time_embedding"):
        assert f"'{name}' parameter of mlp_denoiser" in message
    with pytest.raises(ValueError, match="'size' parameter of conv_denoiser must be even"):
        conv_denoiser(1, 7)
