"""MTT expert-trajectory buffer: sharded safetensors, manifest with checksums, lazy segment reads."""

import json

import pytest
import torch

import anydistill.dataset.experts as experts_module
from anydistill.core.errors import AnydistillError
from anydistill.dataset.experts import ExpertBuffer, ExpertBufferError, ExpertWriter, shard_name

SPEC = {"name": "convnet", "channels": 1, "num_classes": 10, "image_size": (8, 8), "width": 4}
FINGERPRINT = "a" * 64
P, E, K = 7, 5, 3


def trajectories() -> list[torch.Tensor]:
    """K known trajectories [E+1, P]: value = 1000 * expert + 10 * epoch + parameter index."""
    epoch = torch.arange(E + 1).view(-1, 1)
    index = torch.arange(P).view(1, -1)
    return [(1000 * k + 10 * epoch + index).float() for k in range(K)]


def write_buffer(directory, trajs=None):
    with ExpertWriter(directory, model_spec=SPEC, dataset_fingerprint=FINGERPRINT, num_params=P) as writer:
        for traj in trajs or trajectories():
            writer.add_expert(list(traj))
    return directory


def test_round_trip_segments_equal_written_rows(tmp_path):
    write_buffer(tmp_path / "buf")
    buffer = ExpertBuffer.open(tmp_path / "buf", expected_model_spec=SPEC, expected_dataset_fingerprint=FINGERPRINT)
    assert len(buffer) == K and buffer.num_epochs == E and buffer.num_params == P
    assert buffer.dataset_fingerprint == FINGERPRINT
    for k, traj in enumerate(trajectories()):
        for start in range(E):
            for m in range(1, E - start + 1):
                a, b = buffer.segment(k, start, m)
                assert a.dtype == torch.float32 and a.shape == (P,)
                assert torch.equal(a, traj[start]) and torch.equal(b, traj[start + m])
    manifest = json.loads((tmp_path / "buf" / "manifest.json").read_text())
    assert manifest["num_experts"] == K and manifest["num_epochs"] == E and manifest["num_params"] == P
    assert manifest["model_spec"]["image_size"] == [8, 8]
    assert [s["file"] for s in manifest["shards"]] == [shard_name(k) for k in range(K)]
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    with pytest.raises(ValueError, match=r"use start_epoch \+ num_epochs <= 5"):
        buffer.segment(0, 4, 2)
    with pytest.raises(ValueError, match=r"expert index must be an int in \[0, 3\)"):
        buffer.segment(3, 0, 1)


def test_no_temporary_files_left(tmp_path):
    write_buffer(tmp_path / "buf")
    names = sorted(p.name for p in (tmp_path / "buf").iterdir())
    assert names == ["expert-00000.safetensors", "expert-00001.safetensors", "expert-00002.safetensors", "manifest.json"]


def test_segment_reads_two_rows_through_safe_open_slices(tmp_path, monkeypatch):
    write_buffer(tmp_path / "buf")
    buffer = ExpertBuffer.open(tmp_path / "buf")
    calls = {"open": 0, "get_tensor": 0, "rows": []}
    real_safe_open = experts_module.safe_open

    class SliceSpy:
        def __init__(self, inner):
            self.inner = inner

        def get_shape(self):
            return self.inner.get_shape()

        def __getitem__(self, key):
            out = self.inner[key]
            calls["rows"].append(out.shape[0])
            return out

    class HandleSpy:
        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_slice(self, name):
            return SliceSpy(self.inner.get_slice(name))

        def get_tensor(self, name):
            calls["get_tensor"] += 1
            return self.inner.get_tensor(name)

    def spy(*args, **kwargs):
        calls["open"] += 1
        return HandleSpy(real_safe_open(*args, **kwargs))

    monkeypatch.setattr(experts_module, "safe_open", spy)
    start, end = buffer.segment(1, 2, 2)
    assert torch.equal(start, trajectories()[1][2]) and torch.equal(end, trajectories()[1][4])
    assert calls["open"] == 1 and calls["get_tensor"] == 0
    assert calls["rows"] == [1, 1]  # two single rows materialised, never the [E+1, P] tensor


def test_checksum_verified_once_per_shard(tmp_path, monkeypatch):
    write_buffer(tmp_path / "buf")
    buffer = ExpertBuffer.open(tmp_path / "buf")
    hashed = []
    real = experts_module.file_sha256
    monkeypatch.setattr(experts_module, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    for _ in range(3):
        buffer.segment(0, 0, 1)
        buffer.segment(2, 1, 3)
    assert hashed == [shard_name(0), shard_name(2)]


def test_sample_segment_deterministic_and_in_range(tmp_path):
    write_buffer(tmp_path / "buf")
    buffer = ExpertBuffer.open(tmp_path / "buf")
    trajs = trajectories()

    def draws(seed, n=60, max_start=3, m=2):
        generator = torch.Generator().manual_seed(seed)
        return [buffer.sample_segment(generator, max_start, m) for _ in range(n)]

    first, second = draws(0), draws(0)
    assert [(k, t) for k, t, _, _ in first] == [(k, t) for k, t, _, _ in second]
    assert [(k, t) for k, t, _, _ in first] != [(k, t) for k, t, _, _ in draws(1)]
    for k, t, start, end in first:
        assert 0 <= k < K and 0 <= t < 3
        assert torch.equal(start, trajs[k][t]) and torch.equal(end, trajs[k][t + 2])
    assert {k for k, *_ in first} == set(range(K)) and {t for _, t, *_ in first} == {0, 1, 2}
    # The largest target epoch is (max_start - 1) + expert_epochs = E: allowed; one more is not.
    buffer.sample_segment(torch.Generator().manual_seed(0), 4, 2)
    with pytest.raises(ValueError, match=r"max_start_epoch \+ expert_epochs must be <= 6 .* Got 4 \+ 3"):
        buffer.sample_segment(torch.Generator().manual_seed(0), 4, 3)
    with pytest.raises(ValueError, match="'max_start_epoch' of MTT must be an int >= 1"):
        buffer.sample_segment(torch.Generator().manual_seed(0), 0, 1)


def test_corrupt_shard_is_refused(tmp_path):
    directory = write_buffer(tmp_path / "buf")
    shard = directory / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # a byte of the tensor data, past the safetensors header
    shard.write_bytes(bytes(data))
    buffer = ExpertBuffer.open(directory)
    buffer.segment(0, 0, 1)  # other shards are still readable
    with pytest.raises(ExpertBufferError, match=r"expert-00001\.safetensors .* corrupt .*delete") as info:
        buffer.segment(1, 0, 1)
    assert str(directory) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, AnydistillError)
    shard.unlink()
    with pytest.raises(ExpertBufferError, match="missing or corrupt"):
        ExpertBuffer.open(directory).segment(1, 0, 1)


def test_mismatched_spec_or_dataset_is_refused(tmp_path):
    directory = write_buffer(tmp_path / "buf")
    with pytest.raises(ExpertBufferError, match="built for another model"):
        ExpertBuffer.open(directory, expected_model_spec={**SPEC, "width": 8})
    with pytest.raises(ExpertBufferError, match="built on another dataset .*delete"):
        ExpertBuffer.open(directory, expected_dataset_fingerprint="b" * 64)
    # Tuples and lists compare equal, since the spec goes through JSON.
    ExpertBuffer.open(directory, expected_model_spec={**SPEC, "image_size": [8, 8]})


def test_interrupted_write_cannot_be_opened(tmp_path):
    directory = tmp_path / "buf"
    with pytest.raises(RuntimeError, match="killed"):
        with ExpertWriter(directory, model_spec=SPEC, dataset_fingerprint=FINGERPRINT, num_params=P) as writer:
            writer.add_expert(list(trajectories()[0]))
            raise RuntimeError("killed")
    assert (directory / shard_name(0)).is_file() and not (directory / "manifest.json").exists()
    with pytest.raises(ExpertBufferError, match=r"no manifest\.json \(an interrupted write.*delete"):
        ExpertBuffer.open(directory)
    with pytest.raises(ExpertBufferError, match="has no manifest"):
        ExpertBuffer.open(tmp_path / "nowhere")


def test_corrupt_manifest_is_refused(tmp_path):
    directory = write_buffer(tmp_path / "buf")
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(ExpertBufferError, match=r"manifest of the expert buffer .* is corrupt: delete"):
        ExpertBuffer.open(directory)


def test_writer_validation(tmp_path):
    directory = write_buffer(tmp_path / "buf")
    with pytest.raises(ExpertBufferError, match="never overwritten: delete it"):
        ExpertWriter(directory, model_spec=SPEC, dataset_fingerprint=FINGERPRINT, num_params=P)
    writer = ExpertWriter(tmp_path / "other", model_spec=SPEC, dataset_fingerprint=FINGERPRINT, num_params=P)
    with pytest.raises(ValueError, match="Snapshot 1 of an expert must be a 1-D tensor of 7 values. Got \\(8,\\)"):
        writer.add_expert([torch.zeros(P), torch.zeros(P + 1)])
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        writer.add_expert([torch.zeros(P)])
    writer.add_expert([torch.zeros(P, dtype=torch.float64)] * 3)
    with pytest.raises(ValueError, match="same number of epochs: the first has 2"):
        writer.add_expert([torch.zeros(P)] * 4)
    writer.close()
    assert ExpertBuffer.open(tmp_path / "other").segment(0, 0, 2)[1].dtype == torch.float32
    with pytest.raises(ExpertBufferError, match="no experts"):
        ExpertWriter(tmp_path / "empty", model_spec=SPEC, dataset_fingerprint=FINGERPRINT, num_params=P).close()
    with pytest.raises(ValueError, match="JSON-serialisable"):
        ExpertWriter(tmp_path / "x", model_spec={"f": object()}, dataset_fingerprint=FINGERPRINT, num_params=P)
