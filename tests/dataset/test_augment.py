"""Differentiable siamese augmentation: shared draws, differentiability, identities, official ranges."""

import math

import pytest
import torch

from anydistill.dataset.augment import GROUPS, AugmentParams, SiameseAugment

FULL = "color_crop_cutout_flip_scale_rotate"


def _images(n=4, c=3, h=16, w=16, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _params_equal(a: AugmentParams, b: AugmentParams) -> bool:
    if a.ops != b.ops or a.image_size != b.image_size:
        return False
    return all(torch.equal(getattr(a, op), getattr(b, op)) for op in a.ops)


@pytest.mark.parametrize("mode", ["single", "multiple"])
def test_identical_params_and_inputs_give_identical_outputs(mode):
    aug = SiameseAugment(FULL, mode=mode)
    x = _images()
    for seed in range(5):
        params = aug.sample(4, torch.Generator().manual_seed(seed), image_size=(16, 16))
        assert torch.equal(aug.apply(x, params), aug.apply(x.clone(), params))


@pytest.mark.parametrize("mode", ["single", "multiple"])
def test_real_and_synthetic_batches_get_the_same_transform(mode):
    aug = SiameseAugment(FULL, mode=mode)
    generator = torch.Generator().manual_seed(1)
    x = _images()
    for _ in range(5):
        # One shared draw (the official seed != -1): it applies to batches of any size alike.
        params = aug.sample(1, generator, image_size=(16, 16))
        real = torch.cat([x, _images(seed=9)])  # a larger "real" batch that starts with x
        syn = x.clone().requires_grad_(True)
        assert torch.equal(aug.apply(real, params)[: len(x)], aug.apply(syn, params).detach())
        # ... and every image of a batch gets that same transform.
        same = aug.apply(x[:1].expand(3, -1, -1, -1), params)
        assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


def test_per_image_draws_differ_within_a_batch():
    aug = SiameseAugment(FULL, mode="multiple")
    params = aug.sample(8, torch.Generator().manual_seed(0), image_size=16)
    assert params.batch_size == 8
    assert params.rotate.unique().numel() == 8 and params.scale.unique().numel() == 16
    out = aug(_images(8), torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 16, 16)


@pytest.mark.parametrize("strategy", [*GROUPS, FULL])
def test_gradients_flow_to_the_synthetic_input(strategy):
    aug = SiameseAugment(strategy, mode="multiple")
    syn = _images(2).requires_grad_(True)
    params = aug.sample(1, torch.Generator().manual_seed(3), image_size=16)
    out = aug.apply(syn, params)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


def test_flip_with_probability_one_is_torch_flip():
    aug = SiameseAugment("flip", flip=1.0)
    x = _images()
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), torch.flip(x, dims=[-1]))
    assert torch.equal(SiameseAugment("flip", flip=0.0)(x), x)


IDENTITY = {
    "brightness": torch.zeros(1),
    "saturation": torch.ones(1),
    "contrast": torch.ones(1),
    "crop": torch.zeros(1, 2, dtype=torch.long),
    "cutout": torch.tensor([[5, 5, 5, 5]]),
    "flip": torch.zeros(1, dtype=torch.bool),
    "scale": torch.ones(1, 2),
    "rotate": torch.zeros(1),
}


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("op", [*IDENTITY, "all"])
def test_zero_magnitude_params_are_the_identity(op, align_corners):
    ops = tuple(IDENTITY) if op == "all" else (op,)
    params = AugmentParams(ops=ops, image_size=(16, 12), **{k: IDENTITY[k] for k in ops})
    x = torch.randn(3, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    # Chaining every transform resamples the image several times in fp32: errors add up to ~1e-5.
    tolerance = 1e-4 if op == "all" else 1e-5
    torch.testing.assert_close(SiameseAugment(align_corners=align_corners).apply(x, params), x, rtol=0, atol=tolerance)


def test_zero_magnitude_settings_are_the_identity():
    # Brightness 0, scale 1, rotation 0, no shift, no cutout, no flip: any draw is the identity.
    aug = SiameseAugment(
        "crop_cutout_flip_scale_rotate", mode="multiple", scale=1.0, rotate=0.0, crop=0.0, cutout=0.0, flip=0.0
    )
    x = _images()
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(0)), x, rtol=0, atol=1e-5)
    assert SiameseAugment("none")(x) is x


def test_determinism_under_a_generator():
    aug = SiameseAugment(FULL)
    x = _images()
    a = [aug.sample(4, torch.Generator().manual_seed(7), image_size=16) for _ in range(2)]
    assert _params_equal(*a)
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(10):
        assert torch.equal(aug(x, gen_a), aug(x, gen_b))
    multiple = SiameseAugment(FULL, mode="multiple")
    draws = [multiple.sample(4, torch.Generator().manual_seed(s), image_size=16) for s in (1, 2)]
    assert not _params_equal(*draws)
    # The global RNG is not touched by seeded draws.
    state = torch.get_rng_state()
    aug.sample(4, torch.Generator().manual_seed(0), image_size=16)
    assert torch.equal(state, torch.get_rng_state())


def test_single_mode_picks_one_group_per_draw_and_covers_all():
    aug = SiameseAugment(FULL)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        ops = aug.sample(1, generator, image_size=16).ops
        group = next(g for g, group_ops in GROUPS.items() if group_ops == ops)
        seen.add(group)
    assert seen == set(GROUPS)


def test_draws_lie_in_the_official_ranges():
    aug = SiameseAugment(FULL, mode="multiple")
    p = aug.sample(4000, torch.Generator().manual_seed(0), image_size=(32, 32))
    assert p.brightness.min() >= -0.5 and p.brightness.max() < 0.5
    assert p.saturation.min() >= 0 and p.saturation.max() < 2.0
    assert p.contrast.min() >= 0.5 and p.contrast.max() < 1.5
    # crop: int(32 * 0.125 + 0.5) = 4, every shift in -4..4 occurs.
    assert set(p.crop.unique().tolist()) == set(range(-4, 5))
    # cutout: a 16x16 box (int(32 * 0.5 + 0.5)), centre in 0..32 (even size: one past the end too).
    assert torch.all(p.cutout[:, 2] - p.cutout[:, 0] == 16) and torch.all(p.cutout[:, 3] - p.cutout[:, 1] == 16)
    assert set((p.cutout[:, 0] + 8).unique().tolist()) == set(range(33))
    assert 0.45 < p.flip.float().mean() < 0.55
    assert p.scale.min() >= 1 / 1.2 and p.scale.max() <= 1.2
    assert p.rotate.abs().max() <= math.radians(15)


def _official_crop(x, dr, dc):
    """Output pixel (i, j) is input pixel (i + dr, j + dc), zero outside: the official pad-and-index."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dr < h and 0 <= j + dc < w:
                out[..., i, j] = x[..., i + dr, j + dc]
    return out


def test_crop_is_an_exact_integer_translation():
    aug = SiameseAugment("crop")
    x = torch.randn(2, 3, 12, 10)
    for dr, dc in [(0, 0), (2, -1), (-3, 3), (11, 0), (-1, -9)]:
        params = AugmentParams(ops=("crop",), image_size=(12, 10), crop=torch.tensor([[dr, dc]]))
        assert torch.equal(aug.apply(x, params), _official_crop(x, dr, dc))


def test_cutout_zeroes_the_box_clipped_to_the_image():
    aug = SiameseAugment("cutout")
    x = torch.randn(1, 2, 8, 8)
    params = AugmentParams(ops=("cutout",), image_size=(8, 8), cutout=torch.tensor([[-2, 5, 2, 9]]))
    out = aug.apply(x, params)
    expected = x.clone()
    expected[..., 0:2, 5:8] = 0
    assert torch.equal(out, expected)


def test_invalid_settings_and_mismatched_batches_are_reported():
    with pytest.raises(ValueError) as info:
        SiameseAugment("colour_crop", mode="S", scale=0.5, flip=1.5)
    message = str(info.value)
    for name in ("'colour'", "'mode'", "'scale'", "'flip'"):
        assert name in message
    aug = SiameseAugment(FULL)
    params = aug.sample(4, torch.Generator().manual_seed(0), image_size=16)
    with pytest.raises(ValueError, match="image_size=x.shape"):
        aug.apply(torch.randn(4, 3, 8, 8), params)
    if params.ops:
        with pytest.raises(ValueError, match="batch of 3 images but parameters for 4"):
            aug.apply(torch.randn(3, 3, 16, 16), params)
    with pytest.raises(ValueError, match="'batch_size'"):
        aug.sample(0, image_size=16)
