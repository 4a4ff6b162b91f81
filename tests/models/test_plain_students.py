"""The plain-torch students (`mixer`, `vit`, `cnn1d`, `gru`, and `mlp` on signals): shapes, the
named stages feature losses tap, documented sizes, and one optimizer step that learns."""

import pytest
import torch

from anydistill.classifier.methods.fitnets import build_regressor
from anydistill.core.taps import capture_features
from anydistill.registries import MODELS

SIGNAL, IMAGE = (1, 40), (1, 28, 28)
# (name, input shape, stages with default options, parameters with default options: the docstrings' figures)
BUILDS = [
    ("mixer", SIGNAL, 4, 73_842),
    ("mixer", IMAGE, 4, 79_818),
    ("vit", SIGNAL, 4, 135_626),
    ("vit", IMAGE, 4, 138_890),
    ("cnn1d", SIGNAL, 3, 40_810),
    ("gru", SIGNAL, 1, 51_594),
    ("gru", IMAGE, 1, 61_962),
]


def _build(name, shape, **options):
    torch.manual_seed(0)
    return MODELS.get(name)(input_shape=shape, num_classes=10, **options)


@pytest.mark.parametrize(("name", "shape", "stages", "params"), BUILDS)
def test_forward_shape_named_stages_and_size(name, shape, stages, params):
    model = _build(name, shape)
    assert sum(p.numel() for p in model.parameters()) == params
    paths = [f"stages.{i}" for i in range(stages)] + ["penultimate", "head"]
    x = torch.randn(5, *shape)
    with capture_features(model, paths) as features:
        logits = model(x)
    assert logits.shape == (5, 10)
    assert f"stages.{stages}" not in dict(model.named_modules())
    assert all(features[f"stages.{i}"].shape[0] == 5 and features[f"stages.{i}"].dim() == 3 for i in range(stages))
    penultimate = features["penultimate"]
    assert penultimate.dim() == 2 and penultimate.shape[0] == 5
    assert model.head.in_features == penultimate.shape[1]
    torch.testing.assert_close(model.head(penultimate), logits)


@pytest.mark.parametrize(("name", "shape", "stage_shape"), [
    ("mixer", SIGNAL, (10, 64)), ("mixer", IMAGE, (16, 64)),  # [B, tokens, dim]: 40/4 and (28/7)^2 patches
    ("vit", SIGNAL, (10, 64)), ("vit", IMAGE, (16, 64)),
    ("cnn1d", SIGNAL, (32, 20)),  # [B, C, L]: channels first, the length halved per stage
    ("gru", SIGNAL, (40, 128)), ("gru", IMAGE, (28, 128)),  # [B, T, hidden]: 40 steps, or 28 rows
])
def test_first_stage_layout(name, shape, stage_shape):
    model = _build(name, shape)
    with capture_features(model, ["stages.0"]) as features:
        model(torch.randn(2, *shape))
    assert features["stages.0"].shape == (2, *stage_shape)


def test_options_change_the_stages():
    assert len(_build("cnn1d", SIGNAL, channels=[8, 8, 8, 8, 8]).stages) == 5
    plain = _build("cnn1d", SIGNAL, batch_norm=False)
    assert [type(m).__name__ for m in plain.stages[0]] == ["Conv1d", "ReLU", "MaxPool1d"] and plain.stages[0][0].bias is not None
    assert [type(m).__name__ for m in _build("cnn1d", SIGNAL).stages[0]] == ["Conv1d", "BatchNorm1d", "ReLU", "MaxPool1d"]
    assert len(_build("vit", SIGNAL, depth=2, dim=32, heads=2).stages) == 2
    assert len(_build("mixer", IMAGE, depth=1, patch_size=14).stages) == 1
    assert len(_build("gru", SIGNAL, layers=3, hidden=16).stages) == 3
    model = _build("vit", SIGNAL, patch_size=8)  # 5 tokens
    with capture_features(model, ["embed"]) as features:
        model(torch.randn(2, *SIGNAL))
    assert features["embed"].shape == (2, 5, 64)


def test_multichannel_signals():
    for name in ("mixer", "vit", "cnn1d", "gru"):
        assert _build(name, (3, 40))(torch.randn(2, 3, 40)).shape == (2, 10)
    assert _build("gru", (3, 8, 8))(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(("name", "shape", "options", "message"), [
    ("cnn1d", IMAGE, {}, "cnn1d takes \\(C, L\\) signals"),
    ("cnn1d", SIGNAL, {"kernel_size": 4}, "must be odd"),
    ("cnn1d", (1, 8), {"channels": [4, 4, 4, 4]}, "below 1"),
    ("vit", SIGNAL, {"patch_size": 7}, "must divide the input's 40"),
    ("mixer", (1, 8, 8), {}, "patch_size 7 must divide the input's 8x8"),
    ("vit", SIGNAL, {"dim": 30, "heads": 4}, "multiple of heads"),
    ("gru", (13,), {}, "Use mlp for flat features"),
    ("mixer", (13,), {}, "Use mlp for flat features"),
])
def test_refused_inputs_and_options(name, shape, options, message):
    with pytest.raises(ValueError, match=message):
        _build(name, shape, **options)


def test_mlp_flattens_signals():
    model = _build("mlp", SIGNAL, hidden=[32])
    assert model(torch.randn(4, *SIGNAL)).shape == (4, 10)
    assert model[1].in_features == 40


@pytest.mark.parametrize(("name", "shape"), [(n, s) for n, s, _, _ in BUILDS] + [("mlp", SIGNAL), ("mlp", IMAGE)])
def test_one_optimizer_step_reduces_the_loss(name, shape):
    model = _build(name, shape)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, *shape, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(model(x), y)
    assert after < before


def test_penultimate_features_pair_across_kinds_for_fitnets():
    # The uniform [B, D] `penultimate` of any two kinds is regressed linearly (FitNets' flat case).
    teacher, student = _build("cnn1d", SIGNAL), _build("gru", SIGNAL, hidden=16)
    x = torch.randn(3, *SIGNAL)
    shapes = {}
    for role, model in (("teacher", teacher), ("student", student)):
        with capture_features(model, ["penultimate"]) as features:
            model(x)
        shapes[role] = features["penultimate"].shape
    regressor = build_regressor(shapes["student"], shapes["teacher"])
    assert isinstance(regressor, torch.nn.Linear) and (regressor.in_features, regressor.out_features) == (16, 128)
