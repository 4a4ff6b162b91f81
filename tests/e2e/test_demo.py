"""`anydistill demo [FAMILY]`: every family's demo recipe validates, the command runs the right one,
an unknown family is refused, and one shrunken demo runs for real through the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from anydistill import cli
from anydistill.catalog import load_recipe, shipped_recipes


@pytest.mark.parametrize("family", cli.DEMO_FAMILIES)
def test_demo_recipe_validates_and_names_its_command(family):
    path = shipped_recipes()[f"demo/{family}"]
    first = path.read_text().splitlines()[0]
    command = "anydistill demo" if family == "classifier" else f"anydistill demo {family}"
    assert first.startswith("# Run: ") and command in first  # `anydistill recipes` shows this line
    recipe = load_recipe(f"demo/{family}")
    assert recipe.name == f"demo-{family}"
    # Each demo distills at least one student (its table sets it against a teacher or baselines).
    assert any(c.target.trains == "student" and not c.target.baseline for c in recipe.methods.values())


def test_classifier_demo_is_mnist_demo_with_100_labels():
    """`anydistill demo` ran mnist/demo (every label) before demo/classifier existed: the two differ
    only in the labelled subset, where KD has something to give."""
    def body(name):
        raw = yaml.safe_load(shipped_recipes()[name].read_text())
        raw.pop("name")
        return raw

    demo, full = body("demo/classifier"), body("mnist/demo")
    assert demo["data"].pop("labelled_count") == 100
    assert demo == full


@pytest.mark.parametrize("family", [None, *cli.DEMO_FAMILIES])
def test_demo_dispatches_to_the_family_recipe(family, monkeypatch, tmp_path):
    seen = {}

    def fake_run(args):
        seen.update(recipe=args.recipe, set=args.set, resume=args.resume, name=args.name, runs=args.runs)
        return 0

    monkeypatch.setattr(cli, "command_run", fake_run)
    argv = ["demo", *([family] if family else []), "--set", "trainer.max_epochs=1", "--runs", str(tmp_path)]
    assert cli.main(argv) == 0
    assert seen == {"recipe": f"demo/{family or 'classifier'}", "set": ["trainer.max_epochs=1"], "resume": None,
                    "name": None, "runs": str(tmp_path)}


def test_unknown_family_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "vision", "--runs", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'vision'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bad_override_is_one_error_line(capsys, tmp_path):
    assert cli.main(["demo", "dataset", "--set", "trainer.max_epochs=0", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "max_epochs" in err
    assert not any(tmp_path.iterdir())  # nothing written before validation passes


def test_dataset_demo_runs_shrunk(capsys, tmp_path, monkeypatch):
    """The real command on the real recipe, shrunk by --set to a few seconds: the table and report appear."""
    monkeypatch.setattr("sys.argv", ["anydistill"])
    shrink = ["trainer.max_epochs=1", "trainer.progress_bar=false", "methods.dm.iterations_per_epoch=2", "evaluation.epochs=2",
              "evaluation.num_models=1", "evaluation.full_data_epochs=1"]
    argv = ["demo", "dataset", "--runs", str(tmp_path), "--name", "d"]
    for assignment in shrink:
        argv += ["--set", assignment]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "d"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"full-data", "random", "herding", "dm"} <= set(metrics)
    assert all("images" in row and "eval_s_per_model" in row for row in metrics.values())
    assert "dm" in out and "herding" in out and str(run / "report.md") in out
    assert (run / "report.md").is_file()
