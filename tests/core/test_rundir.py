"""Run directories: never overwritten, files written atomically."""

import json

import yaml

import pytest

from anydistill.core.errors import RunDirError
from anydistill.core.rundir import RunDir, write_atomic


def _tree(path):
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def test_create_makes_a_new_directory(tmp_path):
    run = RunDir.create(tmp_path / "runs", "first")
    assert run.path == tmp_path / "runs" / "first" and run.path.is_dir()
    assert list(run.path.iterdir()) == []


def test_create_refuses_an_existing_directory_and_leaves_it_alone(tmp_path):
    run = RunDir.create(tmp_path, "exp")
    run.write_config({"name": "exp", "seed": 1})
    run.write_json("metrics.json", {"student": {"accuracy": 0.9}})
    (run.path / "checkpoints" / "kd").mkdir(parents=True)
    (run.path / "checkpoints" / "kd" / "last.ckpt").write_bytes(b"\x00weights")
    before = _tree(run.path)
    with pytest.raises(RunDirError) as info:
        RunDir.create(tmp_path, "exp")
    message = str(info.value)
    assert str(run.path) in message
    assert "--resume" in message and "--name" in message
    assert _tree(run.path) == before


def test_non_main_process_does_not_create_or_check(tmp_path):
    RunDir.create(tmp_path, "exp")
    run = RunDir.create(tmp_path, "exp", is_main_process=False)  # rank 0 already made it
    assert run.path == tmp_path / "exp"
    other = RunDir.create(tmp_path, "absent", is_main_process=False)
    assert not other.path.exists()


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_write_atomic_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "file.txt"
    write_atomic(target, "good")
    with pytest.raises(TypeError):
        write_atomic(target, 123)  # type: ignore[arg-type]  # fails while writing the temporary file
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_config_and_json_round_trip(tmp_path):
    run = RunDir.create(tmp_path, "exp")
    resolved = {"name": "exp", "optimizer": {"lr": 0.001}, "methods": {"kd": {"name": "kd", "temperature": 2.0}}}
    run.write_config(resolved)
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == resolved
    assert list((run.path / "config.yaml").read_text().splitlines())[0] == "name: exp"  # keys keep their order
    run.write_json("metrics.json", {"kd": {"accuracy": 0.5}})
    assert run.read_metrics() == {"kd": {"accuracy": 0.5}}
    assert json.loads((run.path / "metrics.json").read_text()) == {"kd": {"accuracy": 0.5}}
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "metrics.json"]


def test_read_metrics_missing_is_empty(tmp_path):
    assert RunDir.create(tmp_path, "exp").read_metrics() == {}


@pytest.mark.parametrize("content", [b'{"kd": {"accuracy": 0.', b"\xff\xfe\x00garbage"])
def test_corrupt_metrics_is_a_rundir_error(tmp_path, content):
    run = RunDir.create(tmp_path, "exp")
    (run.path / "metrics.json").write_bytes(content)
    with pytest.raises(RunDirError, match="metrics.json is corrupt: delete it"):
        run.read_metrics()


def test_existing_requires_a_config(tmp_path):
    with pytest.raises(RunDirError, match="is not a run directory"):
        RunDir.existing(tmp_path)
    run = RunDir.create(tmp_path, "exp")
    run.write_config({"name": "exp"})
    assert RunDir.existing(run.path).path == run.path


def test_last_checkpoint(tmp_path):
    run = RunDir.create(tmp_path, "exp")
    assert run.checkpoint_dir("kd") == run.path / "checkpoints" / "kd"
    assert run.last_checkpoint("kd") is None
    run.checkpoint_dir("kd").mkdir(parents=True)
    (run.checkpoint_dir("kd") / "last.ckpt").write_bytes(b"x")
    assert run.last_checkpoint("kd") == run.path / "checkpoints" / "kd" / "last.ckpt"
