"""`anydistill tune`: a study through the CLI on tiny digits, resume from storage, the pruning
callback, search-space validation, and the rule that the test split is never read."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from anydistill.catalog import load_recipe
from anydistill.cli import main
from anydistill.core.space import Choice, IntRange, LogUniform, Uniform, parse_space
from anydistill.study.tune import ReportToTrial, TuneError, build_space, fit_method, load_method_recipe

TINY = """\
# tiny tune test recipe
name: tiny
seed: 0
data: {{name: {data}, batch_size: 64}}
teacher: {{name: mlp, hidden: [16]}}
student: {{name: mlp, hidden: [8]}}
trainer: {{max_epochs: {epochs}, limit_train_batches: 2, progress_bar: false}}
methods:
  teacher: {{}}
  scratch: {{}}
  kd: {{}}
"""


def write_recipe(tmp_path: Path, data: str = "digits", epochs: int = 1) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(data=data, epochs=epochs))
    return path


def trial_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_three_trials_to_sqlite_write_every_output(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    db = tmp_path / "tune.db"
    code = main(["tune", str(recipe), "--method", "kd", "--trials", "3", "--storage", f"sqlite:///{db}", "--runs", str(tmp_path / "runs")])
    assert code == 0
    run_dir = tmp_path / "runs" / "tune-tiny-kd"
    rows = trial_rows(run_dir)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert {"optimizer.lr", "optimizer.weight_decay", "temperature", "alpha", "value", "duration_s"} <= set(rows[0])
    assert len(optuna.load_study(study_name="tune-tiny-kd", storage=f"sqlite:///{db}").trials) == 3
    # The teacher was trained once for the study and cached beside it.
    assert (run_dir / "teacher" / "model.safetensors").is_file()
    for plot in ("history.png", "importance.png", "parallel.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 1000
    # best.yaml is a recipe fragment: its values, given back as --set, load on the study's base recipe.
    best = yaml.safe_load((run_dir / "best.yaml").read_text())["methods"]["kd"]
    assert set(best) == {"temperature", "alpha", "optimizer"} and set(best["optimizer"]) == {"lr", "weight_decay"}
    sets = [f"methods.kd.{k}={v}" for k, v in best.items() if k != "optimizer"]
    sets += [f"methods.kd.optimizer.{k}={v}" for k, v in best["optimizer"].items()]
    tuned = load_recipe(str(run_dir / "base.yaml"), sets)
    assert tuned.methods["kd"].kwargs["temperature"] == best["temperature"]
    assert tuned.methods["kd"].optimizer.lr == best["optimizer"]["lr"]
    out = capsys.readouterr().out
    assert out.count("trial #") == 3 and "[3/3]" in out  # one progress line per trial


def test_a_killed_study_resumes_from_its_storage(tmp_path):
    recipe = write_recipe(tmp_path)
    args = ["tune", str(recipe), "--method", "scratch", "--runs", str(tmp_path / "runs")]
    assert main([*args, "--trials", "2"]) == 0
    assert main([*args, "--trials", "4"]) == 0  # the remaining two, in the same study and directory
    study = optuna.load_study(study_name="tune-tiny-scratch", storage=f"sqlite:///{tmp_path / 'runs' / 'tune.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert len(trial_rows(tmp_path / "runs" / "tune-tiny-scratch")) == 4
    assert not (tmp_path / "runs" / "tune-tiny-scratch-2").exists()
    with sqlite3.connect(tmp_path / "runs" / "tune.db") as db:
        assert db.execute("select count(*) from studies").fetchone() == (1,)


class FakeTrial:
    """Prunes once the reported score is below ``floor``."""

    def __init__(self, floor: float):
        self.floor, self.reports = floor, []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.reports[-1][1] < self.floor


def test_the_callback_reports_each_epoch_and_stops_a_pruned_trial():
    trial = FakeTrial(floor=0.5)
    callback = ReportToTrial(trial, "val/accuracy")
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/accuracy": 0.7}, current_epoch=0, should_stop=False)
    callback.on_validation_end(trainer, None)
    assert trial.reports == [(0, 0.7)] and not trainer.should_stop and callback.pruned_at is None
    trainer.callback_metrics["val/accuracy"], trainer.current_epoch = 0.3, 1
    callback.on_validation_end(trainer, None)
    assert trial.reports[-1] == (1, 0.3) and trainer.should_stop and callback.pruned_at == 1


def test_a_pruned_trial_stops_training_after_that_epoch(tmp_path):
    recipe, _ = load_method_recipe(str(write_recipe(tmp_path, epochs=6)), "scratch")
    datamodule = recipe.data.target(**recipe.data.kwargs)
    datamodule.setup()
    trial = FakeTrial(floor=2.0)  # accuracy is never above 2: pruned at the first report
    callback = ReportToTrial(trial, "val/accuracy")
    method = fit_method(recipe, "scratch", datamodule, None, [callback])
    assert callback.pruned_at == 0 and [step for step, _ in trial.reports] == [0]
    assert method.trainer.current_epoch == 1  # one epoch of six ran


def test_an_unknown_space_parameter_exits_2_with_one_line_naming_the_known_ones(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    code = main(["tune", str(recipe), "--method", "kd", "--trials", "1", "--space", "temprature=1:8", "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --space temprature:") and "Did you mean 'temperature'" in err[0]
    assert "alpha" in err[0] and "optimizer.lr" in err[0]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_the_space_is_checked_against_the_typed_signature_and_set_fixes_keys():
    from anydistill.classifier.methods.kd import KD

    with pytest.raises(TuneError) as error:
        build_space(KD, "kd", ["alpha=0.5:1.5", "optimizer.lr=-1:0.1"], fixed=set())
    lines = str(error.value).splitlines()
    assert any("alpha" in line and "less than or equal to 1" in line for line in lines)
    assert any("optimizer.lr" in line for line in lines)
    space = build_space(KD, "kd", ["temperature=1:3:log", "optimizer.weight_decay=off"], fixed={"alpha"})
    assert space == {"optimizer.lr": LogUniform(1e-4, 1e-1), "temperature": LogUniform(1.0, 3.0)}
    assert parse_space("1:4") == Uniform(1.0, 4.0) and parse_space("1:4", integer=True) == IntRange(1, 4)
    assert parse_space("1.0,2.0") == Choice((1.0, 2.0))


NO_TEST_DATA = '''
from anydistill.data.digits import DigitsData


class NoTestDigits(DigitsData):
    """Digits whose test split cannot be read."""

    def split(self, name):
        if name == "test":
            raise RuntimeError("the test split was read")
        return super().split(name)

    def test_dataloader(self):
        raise RuntimeError("the test split was read")
'''


def test_tune_never_reads_the_test_split(tmp_path, monkeypatch, capsys):
    (tmp_path / "no_test_data.py").write_text(NO_TEST_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = write_recipe(tmp_path, data="no_test_data:NoTestDigits")
    code = main(["tune", str(recipe), "--method", "kd", "--trials", "2", "--runs", str(tmp_path / "runs")])
    assert code == 0, capsys.readouterr().err
    assert [r["state"] for r in trial_rows(tmp_path / "runs" / "tune-tiny-kd")] == ["COMPLETE"] * 2
    # The same data module does fail where a test split is read: the check above is not vacuous.
    with pytest.raises(RuntimeError, match="test split was read"):
        main(["run", str(recipe), "--runs", str(tmp_path / "plain")])
