"""SyntheticSet: parameterisation, initialisation, and verified atomic persistence."""

import json

import pytest
import torch

from anydistill import __version__
from anydistill.core.errors import AnydistillError
from anydistill.dataset.synset import LABEL_INIT_SCALE, SynsetError, SyntheticSet

NORM = {"mean": [0.5], "std": [0.25]}
FP = "ab" * 32


def _synset(**kwargs) -> SyntheticSet:
    synset = SyntheticSet(3, 2, (1, 4, 5), **kwargs)
    return synset.init_from_noise(torch.Generator().manual_seed(0))


def _real(per_class=(4, 5, 3)):
    generator = torch.Generator().manual_seed(1)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    y = y[torch.randperm(y.numel(), generator=generator)]
    x = torch.randn(y.numel(), 1, 4, 5, generator=generator)
    return x, y


def test_shapes_and_labels_hard_vs_soft():
    hard = _synset()
    assert hard.images.shape == (6, 1, 4, 5)
    assert torch.equal(hard.labels(), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert hard.class_slice(1) == slice(2, 4)
    assert [name for name, _ in hard.named_parameters()] == ["images"]

    soft = _synset(learn_labels=True)
    targets = soft.labels()
    assert targets.shape == (6, 3)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert torch.equal(targets.argmax(1), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert (targets.max(1).values > 0.99).all()
    assert soft.label_logits.max().item() == LABEL_INIT_SCALE
    assert soft.label_logits.requires_grad
    with pytest.raises(IndexError):
        soft.class_slice(3)


def test_constructor_reports_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        SyntheticSet(0, 1.5, (1, 4), initial_lr=-1.0)
    lines = str(info.value).splitlines()
    assert len(lines) == 4 and all("SyntheticSet" in line for line in lines)


def test_init_from_noise_is_deterministic():
    a, b = _synset(), _synset()
    assert torch.equal(a.images, b.images)
    c = SyntheticSet(3, 2, (1, 4, 5)).init_from_noise(torch.Generator().manual_seed(1))
    assert not torch.equal(a.images, c.images)


def test_init_from_real_picks_real_images_of_each_class():
    x, y = _real()
    synset = SyntheticSet(3, 3, (1, 4, 5))
    index = synset.init_from_real(x, y, torch.Generator().manual_seed(2))
    assert index.unique().numel() == 9
    for c in range(3):
        rows = synset.images[synset.class_slice(c)].detach()
        for row, i in zip(rows, index[synset.class_slice(c)]):
            assert y[i] == c
            assert torch.equal(row, x[i])
            # The row is really one of x's rows (independently of the returned index).
            assert any(torch.equal(row, x[j]) for j in (y == c).nonzero().squeeze(1))
    again = SyntheticSet(3, 3, (1, 4, 5))
    again.init_from_real(x, y, torch.Generator().manual_seed(2))
    assert torch.equal(again.images, synset.images)


def test_init_from_real_refuses_a_short_class():
    x, y = _real()
    with pytest.raises(ValueError, match=r"class 0 has 4; class 2 has 3: lower ipc"):
        SyntheticSet(3, 5, (1, 4, 5)).init_from_real(x, y)


def test_lr_is_positive_and_learnable():
    fixed = _synset(initial_lr=0.03)
    assert fixed.lr.item() == pytest.approx(0.03)
    assert not fixed.log_lr.requires_grad

    synset = _synset(learn_lr=True, initial_lr=0.02)
    assert "log_lr" in dict(synset.named_parameters())
    (synset.lr * 3.0).backward()
    assert synset.log_lr.grad is not None
    assert synset.log_lr.grad.item() == pytest.approx(3.0 * 0.02)  # d exp(u)/du = exp(u)
    with torch.no_grad():
        synset.log_lr -= 100.0  # a huge step still leaves a positive lr
    assert synset.lr.item() > 0


@pytest.mark.parametrize("learn_labels,learn_lr", [(False, False), (True, False), (False, True), (True, True)])
def test_round_trip(tmp_path, learn_labels, learn_lr):
    synset = _synset(learn_labels=learn_labels, learn_lr=learn_lr, initial_lr=0.005)
    with torch.no_grad():  # move every tensor away from its initial value
        if learn_labels:
            synset.label_logits.add_(torch.randn(synset.label_logits.shape, generator=torch.Generator().manual_seed(3)))
        synset.log_lr.add_(0.3)
    synset.save(tmp_path / "set", source_fingerprint=FP, method="mtt", normalisation=NORM)
    loaded, manifest = SyntheticSet.load(tmp_path / "set")

    assert dict(loaded.state_dict()).keys() == dict(synset.state_dict()).keys()
    for name, tensor in synset.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded.lr, synset.lr)
    assert [name for name, _ in loaded.named_parameters()] == [name for name, _ in synset.named_parameters()]
    assert (loaded.num_classes, loaded.ipc, loaded.image_shape) == (3, 2, (1, 4, 5))
    assert (loaded.learn_labels, loaded.learn_lr, loaded.initial_lr) == (learn_labels, learn_lr, 0.005)
    assert manifest["num_classes"] == 3 and manifest["ipc"] == 2 and manifest["image_shape"] == [1, 4, 5]
    assert manifest["learn_labels"] is learn_labels and manifest["learn_lr"] is learn_lr
    assert manifest["source"]["fingerprint"] == FP
    assert manifest["method"] == "mtt"
    assert manifest["normalisation"] == {"mean": [0.5], "std": [0.25]}
    assert manifest["anydistill"] == __version__
    assert len(manifest["files"]["synset.safetensors"]["sha256"]) == 64
    assert manifest == json.loads((tmp_path / "set" / "manifest.json").read_text())


def test_grid_is_a_png_and_capped(tmp_path):
    synset = SyntheticSet(2, 12, (3, 4, 4)).init_from_noise(torch.Generator().manual_seed(0))
    synset.save(tmp_path, source_fingerprint=FP, method="dc", normalisation={"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2]})
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flipped_byte_is_refused(tmp_path):
    _synset().save(tmp_path, source_fingerprint=FP, method="dc", normalisation=NORM)
    file = tmp_path / "synset.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(SynsetError) as info:
        SyntheticSet.load(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "checksum" in message and "\n" not in message
    assert isinstance(info.value, AnydistillError)


def test_missing_files_are_refused(tmp_path):
    with pytest.raises(SynsetError, match="no manifest.json"):
        SyntheticSet.load(tmp_path)
    _synset().save(tmp_path, source_fingerprint=FP, method="dc", normalisation=NORM)
    (tmp_path / "synset.safetensors").unlink()
    with pytest.raises(SynsetError, match="no synset.safetensors"):
        SyntheticSet.load(tmp_path)


def test_corrupt_or_mismatched_manifest_is_refused(tmp_path):
    _synset().save(tmp_path, source_fingerprint=FP, method="dc", normalisation=NORM)
    manifest_file = tmp_path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "ipc": 3}))  # shapes no longer match the tensors
    with pytest.raises(SynsetError, match=r"'images' is torch.float32 \[6, 1, 4, 5\], but its manifest implies"):
        SyntheticSet.load(tmp_path)
    manifest_file.write_text(json.dumps({**manifest, "learn_labels": True}))
    with pytest.raises(SynsetError, match="holds"):
        SyntheticSet.load(tmp_path)
    manifest_file.write_text("{not json")
    with pytest.raises(SynsetError, match="is corrupt"):
        SyntheticSet.load(tmp_path)


def test_save_overwrites_only_its_own_files(tmp_path):
    _synset().save(tmp_path, source_fingerprint=FP, method="dc", normalisation=NORM)
    (tmp_path / "notes.txt").write_text("keep me")
    newer = SyntheticSet(3, 2, (1, 4, 5)).init_from_noise(torch.Generator().manual_seed(7))
    newer.save(tmp_path, source_fingerprint="cd" * 32, method="dm", normalisation=NORM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "manifest.json", "notes.txt", "synset.safetensors"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    loaded, manifest = SyntheticSet.load(tmp_path)
    assert torch.equal(loaded.images, newer.images)
    assert manifest["method"] == "dm" and manifest["source"]["fingerprint"] == "cd" * 32


def test_save_validates_its_arguments_at_once(tmp_path):
    with pytest.raises(ValueError) as info:
        _synset().save(tmp_path, source_fingerprint="", method="dc", normalisation={"mean": [0.5, 0.5], "std": [0.0]})
    assert len(str(info.value).splitlines()) == 3
    assert list(tmp_path.iterdir()) == []
