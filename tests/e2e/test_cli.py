"""The command line as a user meets it: bad input is refused in one line per problem, with exit
status 2, no traceback and nothing written; a tiny recipe runs end to end."""

from __future__ import annotations

import json

import pytest

from e2e.helpers import TINY_RECIPE, anydistill

BAD_RECIPES = {
    "unknown key": (TINY_RECIPE.replace("seed: 3", "sed: 3"), ["unknown key 'sed'", "did you mean 'seed'"]),
    "wrong type": (TINY_RECIPE.replace("max_epochs: 2", "max_epochs: two"), ["max_epochs", "valid integer", "'two'"]),
    "unknown method": (TINY_RECIPE.replace("  kd: {", "  kdd: {"), ["Unknown method 'kdd'", "did you mean 'kd'"]),
    "bad range": (TINY_RECIPE.replace("temperature: 2.0", "temperature: -1"), ["'temperature'", "greater than 0", "Got -1"]),
    "yaml syntax": (TINY_RECIPE.replace("name: tiny", "name: [tiny"), ["YAML syntax error", "line"]),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe_is_refused_cleanly(case: str, tmp_path) -> None:
    text, expected = BAD_RECIPES[case]
    (tmp_path / "bad.yaml").write_text(text)
    result = anydistill("run", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert not (tmp_path / "runs").exists(), "a refused recipe must write nothing"


def test_every_problem_is_reported_at_once(tmp_path) -> None:
    text = TINY_RECIPE.replace("seed: 3", "sed: 3").replace("temperature: 2.0", "temperature: -1")
    text = text.replace("max_epochs: 2", "max_epochs: two").replace("  scratch: {}", "  scratchh: {}")
    (tmp_path / "bad.yaml").write_text(text)
    result = anydistill("validate", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    for fragment in ("'sed'", "max_epochs", "'temperature'", "Unknown method 'scratchh'"):
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)
    assert len(lines) == 4


def test_missing_recipe_file(tmp_path) -> None:
    result = anydistill("run", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "no such recipe file" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_methods_json_lists_every_method(tmp_path) -> None:
    result = anydistill("methods", "--json", cwd=tmp_path)
    assert result.returncode == 0
    rows = json.loads(result.stdout)
    names = {row["name"] for row in rows}
    assert {"kd", "fitnets", "attention-transfer", "dkd", "scratch", "teacher"} <= names
    assert all(set(row) == {"name", "family", "paper", "data", "served_teacher", "several_teachers", "parameters"} for row in rows)
    gkd = next(row for row in rows if row["name"] == "gkd")
    assert gkd["several_teachers"] and not next(row for row in rows if row["name"] == "seq-kd")["several_teachers"]
    assert gkd["served_teacher"] and gkd["parameters"]["token_weighting"] == {"type": "'uniform' | 'iw-opd'", "default": "'uniform'"}
    assert gkd["parameters"]["lmbda"]["type"] == "float >= 0, <= 1" and gkd["parameters"]["topk"]["type"] == "int >= 1 | 'adaptive' | none"


def test_tiny_recipe_end_to_end_and_no_overwrite(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    result = anydistill("run", "tiny.yaml", "--name", "t1", "--set", "methods.teacher.max_epochs=3",
                        "--set", "methods.kd.optimizer={lr: 0.01}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "runs" / "t1"
    epochs = {label: {row.split(",")[0] for row in (run / "logs" / label / "metrics.csv").read_text().splitlines()[1:]}
              for label in ("teacher", "scratch")}
    assert epochs == {"teacher": {"0", "1", "2"}, "scratch": {"0", "1"}}  # the teacher's own max_epochs
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "scratch", "kd"}
    for entry in metrics.values():
        assert {"accuracy", "ece", "params", "latency_ms", "teacher_agreement"} <= set(entry)
        assert 0.0 <= entry["accuracy"] <= 1.0
    assert metrics["kd"]["params"] < metrics["teacher"]["params"]
    for name in ("config.yaml", "run.json", "report.md", "plots/learning_curves.png", "logs/kd/metrics.csv",
                 "checkpoints/kd/model.safetensors", "checkpoints/kd/last.ckpt"):
        assert (run / name).is_file(), name
    assert "| kd |" in (run / "report.md").read_text().replace("  ", " ")

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = anydistill("run", "tiny.yaml", "--name", "t1", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    report = anydistill("report", str(run), cwd=tmp_path)
    assert report.returncode == 0, report.stderr


def test_non_finite_loss_stops_in_one_line(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    result = anydistill("run", "tiny.yaml", "--name", "nan", "--set", "optimizer.name=sgd", "--set", "optimizer.lr=1e30",
                        cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "loss became" in lines[0] and "optimizer.lr" in lines[0]
    # The run directory keeps what finished before the failure, and nothing of the failed method.
    metrics = json.loads((tmp_path / "runs" / "nan" / "metrics.json").read_text()) if (tmp_path / "runs" / "nan" / "metrics.json").exists() else {}
    assert "scratch" not in metrics and "kd" not in metrics


def test_trained_teacher_is_reused_from_its_checkpoint(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    first = anydistill("run", "digits/teacher", "--name", "t", "--set", "trainer.max_epochs=1",
                       "--set", "trainer.logger=tensorboard", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    weights = tmp_path / "runs" / "t" / "checkpoints" / "teacher" / "model.safetensors"
    assert weights.is_file()
    assert list((tmp_path / "runs" / "t" / "logs" / "teacher" / "tensorboard").glob("events.*"))

    reuse = TINY_RECIPE.replace("teacher: {name: small-cnn, channels: [8, 16], hidden: 32}",
                                f"teacher: {{name: small-cnn, channels: [16, 32], hidden: 64, checkpoint: {weights}}}")
    reuse = reuse.replace("  teacher: {}\n", "")
    (tmp_path / "reuse.yaml").write_text(reuse)
    second = anydistill("run", "reuse.yaml", "--name", "r", "--set", "trainer.max_epochs=1", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    teacher_metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())["teacher"]
    reference = json.loads((tmp_path / "runs" / "t" / "metrics.json").read_text())["teacher"]
    assert teacher_metrics["accuracy"] == reference["accuracy"]

    wrong = reuse.replace("channels: [16, 32], hidden: 64", "channels: [8, 16], hidden: 64")
    (tmp_path / "wrong.yaml").write_text(wrong)
    third = anydistill("run", "wrong.yaml", "--name", "w", cwd=tmp_path)
    assert third.returncode == 2 and "does not load into" in third.stderr and "Traceback" not in third.stderr
    assert not (tmp_path / "runs" / "w").exists()
