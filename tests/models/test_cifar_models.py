"""The CIFAR networks (`cifar-resnet`, `wide-resnet`, `vgg`): RepDistiller's named configurations
build with its parameter counts, classify 3x32x32 images, and expose the paths recipes tap."""

import pytest
import torch

from anydistill.core.taps import capture_features
from anydistill.registries import MODELS

CIFAR = (3, 32, 32)
# (name, options, parameters with 100 classes: RepDistiller's 1.23M, 7.43M, 2.25M, 0.70M, 3.96M, 9.46M, stage shapes)
CONFIGS = {
    "resnet8x4": ("cifar-resnet", {"depth": 8}, 1_233_540, [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "resnet32x4": ("cifar-resnet", {"depth": 32}, 7_433_860, [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "wrn-40-2": ("wide-resnet", {"depth": 40, "widen": 2}, 2_255_156, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn-16-2": ("wide-resnet", {"depth": 16, "widen": 2}, 703_284, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "vgg8": ("vgg", {"depth": 8}, 3_965_028, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    "vgg13": ("vgg", {"depth": 13}, 9_462_180, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
}


def _build(name, options, num_classes=100):
    torch.manual_seed(0)
    return MODELS.get(name)(input_shape=CIFAR, num_classes=num_classes, **options)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_named_configs_size_shapes_and_taps(config):
    name, options, params, stage_shapes = CONFIGS[config]
    model = _build(name, options)
    assert sum(p.numel() for p in model.parameters()) == params
    paths = [f"stages.{i}" for i in range(len(stage_shapes))] + ["penultimate", "head"]
    assert set(paths) <= set(dict(model.named_modules()))
    with capture_features(model, paths) as features:
        logits = model(torch.randn(2, *CIFAR))
    assert logits.shape == (2, 100)
    assert [tuple(features[f"stages.{i}"].shape[1:]) for i in range(len(stage_shapes))] == stage_shapes
    assert features["penultimate"].shape == (2, stage_shapes[-1][0])
    torch.testing.assert_close(model.head(features["penultimate"]), logits)


@pytest.mark.parametrize(("name", "options", "paths"), [
    ("cifar-resnet", {"depth": 8}, ["stages.0.0.preact", "stages.2.0.preact"]),  # the residual sums before the ReLU
    ("wide-resnet", {"depth": 16, "widen": 2}, ["stages.1.0.bn1", "stages.2.0.bn1", "penultimate.bn"]),
    ("vgg", {"depth": 13}, ["stages.1.bn1", "stages.4.bn1"]),
])
def test_pre_relu_taps_hold_negative_values(name, options, paths):
    model = _build(name, options)
    with torch.no_grad(), capture_features(model, paths) as features:
        model(torch.randn(4, *CIFAR))
    assert all(float(features[path].min()) < 0 for path in paths)


def test_vgg_pools_before_its_last_stage_only_on_large_inputs():
    model = MODELS.get("vgg")(input_shape=(3, 64, 64), num_classes=10, depth=8)
    with capture_features(model, ["stages.4"]) as features:
        model(torch.randn(1, 3, 64, 64))
    assert features["stages.4"].shape == (1, 512, 4, 4)  # 64 -> 32 -> 16 -> 8 -> 4, as RepDistiller on 64x64


@pytest.mark.parametrize(("name", "options", "message"), [
    ("cifar-resnet", {"depth": 10}, "6n \\+ 2"),
    ("cifar-resnet", {"depth": 8, "widths": [16, 32]}, "4 widths"),
    ("wide-resnet", {"depth": 12}, "6n \\+ 4"),
    ("vgg", {"depth": 10}, "8, 11, 13, 16, 19"),
])
def test_bad_options_are_refused_in_one_line(name, options, message):
    with pytest.raises(ValueError, match=message) as error:
        _build(name, options)
    assert "\n" not in str(error.value)


def test_flat_inputs_are_refused():
    with pytest.raises(ValueError, match="takes images"):
        MODELS.get("cifar-resnet")(input_shape=(1, 40), num_classes=10)
