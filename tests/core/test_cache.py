"""The teacher signal cache: build once, reuse, refuse anything stale or corrupt, never half-write."""

import json

import pytest
import torch

import anydistill.core.cache as cache_module
from anydistill.core.cache import (
    build_cache,
    cache_directory,
    load_cache,
    open_or_build_cache,
    signal_names,
    tensor_fingerprint,
)
from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher
from anydistill.models.classifiers import small_cnn

TRANSFORM = "identity"


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return Teacher(small_cnn((1, 8, 8), 10, channels=[4, 8], hidden=16), name="tiny-cnn")


@pytest.fixture
def inputs():
    return torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _build(root, teacher, inputs, features=(), dataset_fingerprint=None):
    return open_or_build_cache(
        root,
        teacher,
        inputs,
        dataset_fingerprint=dataset_fingerprint or tensor_fingerprint(inputs, TRANSFORM),
        transform=TRANSFORM,
        features=features,
    )


def _load(directory, teacher, inputs, **changes):
    kwargs = {
        "teacher_fingerprint": teacher.fingerprint(),
        "dataset_fingerprint": tensor_fingerprint(inputs, TRANSFORM),
        "transform": TRANSFORM,
    }
    kwargs.update(changes)
    return load_cache(directory, **kwargs)


def test_tensor_fingerprint():
    x = torch.arange(12.0).view(3, 4)
    assert tensor_fingerprint(x) == tensor_fingerprint(x.clone())
    assert tensor_fingerprint(x) != tensor_fingerprint(x.view(4, 3))  # shape counts
    assert tensor_fingerprint(x) != tensor_fingerprint(x.double())  # dtype counts
    assert tensor_fingerprint(x, "a") != tensor_fingerprint(x, "b")  # the transform counts
    y = x.clone()
    y[2, 3] += 1
    assert tensor_fingerprint(x) != tensor_fingerprint(y)


def test_build_then_reuse(tmp_path, teacher, inputs):
    signals, directory, built = _build(tmp_path, teacher, inputs)
    assert built is True
    assert directory.parent == tmp_path
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "shard-00000.safetensors"]
    assert set(signals) == {"logits"}
    torch.testing.assert_close(signals["logits"], teacher(inputs).logits)

    again, directory2, built2 = _build(tmp_path, teacher, inputs)
    assert built2 is False and directory2 == directory
    torch.testing.assert_close(again["logits"], signals["logits"], rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == [directory.name]  # nothing else under the root

    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["teacher"] == {"name": "tiny-cnn", "fingerprint": teacher.fingerprint()}
    assert manifest["dataset"]["rows"] == 40 and manifest["dataset"]["transform"] == TRANSFORM
    assert manifest["signals"] == ["logits"]


def test_features_are_stored_when_requested(tmp_path, teacher, inputs):
    features = ["features.3", "classifier.2"]
    signals, directory, built = _build(tmp_path, teacher, inputs, features=features)
    assert built and set(signals) == {"logits", "features/features.3", "features/classifier.2"}
    reference = teacher(inputs, taps=features)
    assert signals["features/features.3"].shape == (40, 8, 4, 4)
    torch.testing.assert_close(signals["features/features.3"], reference.features["features.3"])
    torch.testing.assert_close(signals["features/classifier.2"], reference.features["classifier.2"])
    assert json.loads((directory / "manifest.json").read_text())["signals"] == signal_names(features)
    # Another signal set lives in another directory; a logits-only load of this one works too.
    assert cache_directory(tmp_path, teacher.fingerprint(), "x", features) != cache_directory(tmp_path, teacher.fingerprint(), "x", [])
    only_logits = _load(directory, teacher, inputs)
    assert set(only_logits) == {"logits"}


def test_several_shards_are_concatenated_in_order(tmp_path, teacher, inputs):
    directory = tmp_path / "c"
    build_cache(directory, teacher, inputs, dataset_fingerprint=tensor_fingerprint(inputs, TRANSFORM), transform=TRANSFORM,
                features=["features.0"], batch_size=4, shard_rows=15)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 15), (15, 30), (30, 40)]
    signals = _load(directory, teacher, inputs, features=["features.0"])
    reference = teacher(inputs, taps=["features.0"])
    torch.testing.assert_close(signals["logits"], reference.logits)
    torch.testing.assert_close(signals["features/features.0"], reference.features["features.0"])


def test_other_teacher_is_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    with pytest.raises(CacheError, match="built for another teacher") as info:
        _load(directory, teacher, inputs, teacher_fingerprint="0" * 64)
    assert f"delete {directory}" in str(info.value)


def test_other_dataset_is_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    with pytest.raises(CacheError, match="built for another dataset") as info:
        _load(directory, teacher, inputs, dataset_fingerprint=tensor_fingerprint(inputs + 1, TRANSFORM))
    assert "delete" in str(info.value)


def test_other_transform_is_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    with pytest.raises(CacheError, match="built for another input transform.*delete"):
        _load(directory, teacher, inputs, transform="something else")


def test_missing_features_are_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    with pytest.raises(CacheError, match=r"lacks features/features\.3: delete"):
        _load(directory, teacher, inputs, features=["features.3"])


def test_corrupt_shard_is_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    shard = directory / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # flip the last bytes (inside the tensor data)
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard-00000.safetensors .*corrupt.*delete"):
        _load(directory, teacher, inputs)
    # And open_or_build_cache does not silently rebuild or use it.
    with pytest.raises(CacheError, match="delete"):
        _build(tmp_path, teacher, inputs)


def test_missing_shard_is_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    (directory / "shard-00000.safetensors").unlink()
    with pytest.raises(CacheError, match="missing or corrupt.*delete"):
        _load(directory, teacher, inputs)


def test_missing_manifest_is_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    (directory / "manifest.json").unlink()
    with pytest.raises(CacheError, match="has no manifest.json.*delete"):
        _load(directory, teacher, inputs)
    with pytest.raises(CacheError, match="delete"):
        _build(tmp_path, teacher, inputs)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"shards": []}', ""])
def test_corrupt_manifest_is_refused(tmp_path, teacher, inputs, text):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    (directory / "manifest.json").write_text(text)
    with pytest.raises(CacheError, match="manifest .* is corrupt.*delete"):
        _load(directory, teacher, inputs)


def test_manifest_with_a_damaged_shard_entry_is_refused(tmp_path, teacher, inputs):
    _, directory, _ = _build(tmp_path, teacher, inputs)
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["shards"][0]["sha256"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="delete"):
        _load(directory, teacher, inputs)


def test_crash_mid_build_leaves_nothing(tmp_path, teacher, inputs, monkeypatch):
    real_save = cache_module.save_file
    calls = []

    def failing_save(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(cache_module, "save_file", failing_save)
    root = tmp_path / "cache-root"
    directory = cache_directory(root, teacher.fingerprint(), "ds", [])
    with pytest.raises(OSError, match="disk full"):
        build_cache(directory, teacher, inputs, dataset_fingerprint="ds", transform=TRANSFORM, shard_rows=10)
    assert len(calls) == 2
    assert not directory.exists()
    assert list(root.iterdir()) == []  # no leftover .building-* staging directory

    # After the crash, a build succeeds normally.
    monkeypatch.setattr(cache_module, "save_file", real_save)
    build_cache(directory, teacher, inputs, dataset_fingerprint="ds", transform=TRANSFORM, shard_rows=10)
    assert [p.name for p in root.iterdir()] == [directory.name]
    assert len(json.loads((directory / "manifest.json").read_text())["shards"]) == 4


def test_concurrent_builder_keeps_the_finished_copy(tmp_path, teacher, inputs):
    """A second build of the same cache (another DDP rank) keeps the first copy and cleans up."""
    directory = tmp_path / "c"
    kwargs = {"dataset_fingerprint": "ds", "transform": TRANSFORM}
    build_cache(directory, teacher, inputs, **kwargs)
    first = (directory / "shard-00000.safetensors").read_bytes()
    build_cache(directory, teacher, inputs, **kwargs)
    assert (directory / "shard-00000.safetensors").read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
