"""`anydistill.distill`: the five-line scripts of the docs run; a call and the equivalent recipe
train the same weights; bad arguments raise one RecipeError listing every problem and write nothing."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import anydistill
from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError, RunDirError
from anydistill.core.rundir import RunDir
from anydistill.registries import MODELS
from anydistill.runner import run_recipe

QUIET = {"progress_bar": False}

# The classifier script of docs/python-api.md and the README, verbatim but for the run folder.
CLASSIFIER_SCRIPT = """
import torch, anydistill
from sklearn.datasets import load_digits
X, y = load_digits(return_X_y=True)
teacher = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
student = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
teacher = anydistill.distill(None, teacher, (X / 16, y), method="scratch", epochs=2).student
result = anydistill.distill(teacher, student, (X / 16, y), method="kd", temperature=4.0, epochs=2)
print(result.compare("scratch"))
"""

DATASET_SCRIPT = """
import anydistill
from sklearn.datasets import load_digits
X, y = load_digits(return_X_y=True)
result = anydistill.distill(data=(X.reshape(-1, 1, 8, 8) / 16, y), student={"name": "synthetic-set", "ipc": 1}, method="dm",
                            epochs=1, iterations_per_epoch=2, evaluation={"epochs": 5, "num_models": 1, "baselines": ["random"]})
print(result, result.synset.images.shape)
"""


@pytest.mark.parametrize("script", [CLASSIFIER_SCRIPT, DATASET_SCRIPT], ids=["classifier", "dataset"])
def test_the_documented_script_runs(script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ goes here
    exec(compile(script, "<docs script>", "exec"), {})
    printed = capsys.readouterr().out
    assert "Run directory: runs/" in printed
    assert any(p.is_dir() for p in (tmp_path / "runs").iterdir())


def _tiny_models(seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The student and teacher the recipe below builds, in the runner's order (student first)."""
    L.seed_everything(seed, verbose=False)
    mlp = MODELS.get("mlp")
    return mlp((1, 8, 8), 10, hidden=[16]), mlp((1, 8, 8), 10, hidden=[32])


RECIPE = {"name": "same", "seed": 3, "data": {"name": "digits", "batch_size": 64}, "student": {"name": "mlp", "hidden": [16]},
          "teacher": {"name": "mlp", "hidden": [32]}, "trainer": {"max_epochs": 2, **QUIET}, "methods": {"kd": {"temperature": 2.0}}}


def test_a_call_with_modules_trains_the_weights_the_recipe_trains(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPE)
    trained: dict[str, torch.nn.Module] = {}
    run_recipe(recipe, RunDir.create(tmp_path, "recipe"), trained=trained)
    student, teacher = _tiny_models(3)
    result = anydistill.distill(teacher, student, "digits", "kd", temperature=2.0, epochs=2, batch_size=64, seed=3,
                                trainer=QUIET, run_dir=tmp_path / "python")
    for name, value in trained["kd"].state_dict().items():
        torch.testing.assert_close(result.student.state_dict()[name], value, rtol=0, atol=0)
    assert result.rows["kd"]["accuracy"] == pytest.approx(yaml.safe_load((tmp_path / "recipe" / "metrics.json").read_text())["kd"]["accuracy"])


def test_a_dataset_call_learns_the_synthetic_set_the_recipe_learns(tmp_path: Path) -> None:
    section = {"epochs": 3, "num_models": 1, "baselines": []}
    recipe = load_recipe({"name": "dm", "data": {"name": "digits"}, "student": {"name": "synthetic-set", "ipc": 1},
                          "trainer": {"max_epochs": 1, **QUIET}, "evaluation": section, "methods": {"dm": {"iterations_per_epoch": 2}}})
    trained: dict[str, torch.nn.Module] = {}
    run_recipe(recipe, RunDir.create(tmp_path, "recipe"), trained=trained)
    result = anydistill.distill(data="digits", student={"name": "synthetic-set", "ipc": 1}, method="dm", iterations_per_epoch=2,
                                epochs=1, evaluation=section, trainer=QUIET, run_dir=tmp_path / "python")
    torch.testing.assert_close(result.synset.images, trained["dm"].images, rtol=0, atol=0)
    assert result.synset.images.shape == (10, 1, 8, 8)
    again = result.evaluate(num_models=2)  # the set scored again under other settings; the run is left alone
    assert set(again) == {"dm"} and 0.0 <= again["dm"]["accuracy"] <= 1.0
    with pytest.raises(RecipeError, match="evaluation"):
        result.evaluate(num_modles=2)


def test_in_memory_objects_are_recorded_by_class_size_and_fingerprint(tmp_path: Path) -> None:
    student, teacher = _tiny_models(0)
    x, y = torch.randn(120, 1, 8, 8), torch.arange(120) % 10
    result = anydistill.distill(teacher, student, (x, y), epochs=1, trainer=QUIET, run_dir=tmp_path / "run")
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["student"]["name"] == config["data"]["name"] == "in-memory"
    assert config["student"]["class"] == "torch.nn.modules.container.Sequential"
    assert config["student"]["parameters"] == sum(p.numel() for p in student.parameters())
    assert len(config["teacher"]["fingerprint"]) == 64 and "cannot rebuild" in config["data"]["note"]
    assert "python-api" in yaml.safe_load((result.run_dir / "run.json").read_text())["command"]
    assert result.student is not student  # the caller's module is copied, never trained in place
    assert "<table>" in result._repr_html_() and "kd" in str(result)
    assert list(result.metrics.index) == ["teacher", "kd"]


def test_a_dataloader_and_a_dataset_are_read_into_memory(tmp_path: Path) -> None:
    x, y = torch.randn(100, 64), torch.arange(100) % 4
    pairs = torch.utils.data.TensorDataset(x, y)
    student = torch.nn.Linear(64, 4)
    for i, data in enumerate([pairs, torch.utils.data.DataLoader(pairs, batch_size=32)]):
        result = anydistill.distill(student=student, data=data, method="scratch", epochs=1, trainer=QUIET, run_dir=tmp_path / f"r{i}")
        assert result.rows["scratch"]["params"] == 64 * 4 + 4


def test_bad_arguments_are_all_reported_at_once_and_nothing_is_written(tmp_path: Path) -> None:
    student, teacher = torch.nn.Linear(64, 3), torch.nn.Linear(64, 10)
    data = (torch.randn(200, 64), torch.arange(200) % 10)
    with pytest.raises(RecipeError) as error:
        anydistill.distill(teacher, student, data, temprature=4.0, alpha=2.0, runs=tmp_path)
    assert sorted(p.split(":")[1].strip() for p in error.value.problems) == ["methods.kd.alpha", "methods.kd.temprature"]
    assert any("did you mean 'temperature'?" in p for p in error.value.problems)
    with pytest.raises(RecipeError, match="student: the model gives 3 outputs per row, but the data has 10 classes"):
        anydistill.distill(teacher, student, data, runs=tmp_path)
    with pytest.raises(RecipeError, match="data: got str|Unknown data module"):
        anydistill.distill(teacher, student, "not-a-data-module", runs=tmp_path)
    with pytest.raises(RecipeError, match=r"data: got set; the Python API accepts tensors or arrays \(X, y\)"):
        anydistill.distill(teacher, student, {1, 2}, runs=tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_existing_run_dir_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.json").write_text("{}")
    with pytest.raises(RunDirError, match="already exists"):
        anydistill.distill(student=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), data="digits", method="scratch",
                           run_dir=tmp_path / "taken")
    assert os.listdir(tmp_path / "taken") == ["metrics.json"]


def test_every_method_is_a_lightning_module_for_a_users_own_trainer() -> None:
    from anydistill.classifier.evaluate import ClassifierEvaluator
    from anydistill.data.digits import DigitsData

    student, teacher = _tiny_models(0)
    method = anydistill.methods.get("kd")(student=student, teacher=teacher, temperature=4.0)
    data = DigitsData(batch_size=64)
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(method, datamodule=data)
    row = ClassifierEvaluator(data).evaluate(method.student, teacher)
    assert 0.0 <= row["accuracy"] <= 1.0 and "teacher_agreement" in row


def test_a_call_of_names_only_writes_a_config_the_cli_replays(tmp_path: Path) -> None:
    result = anydistill.distill({"name": "mlp", "hidden": [32]}, {"name": "mlp", "hidden": [16]}, "digits", "kd", temperature=2.0,
                                epochs=1, trainer=QUIET, run_dir=tmp_path / "named")
    replay = load_recipe(str(result.run_dir / "config.yaml"))
    assert replay.student.kwargs["hidden"] == [16] and replay.methods["kd"].kwargs["temperature"] == 2.0
    trained: dict[str, torch.nn.Module] = {}
    run_recipe(replay, RunDir.create(tmp_path, "replayed"), trained=trained)
    for name, value in trained["kd"].state_dict().items():
        torch.testing.assert_close(result.student.state_dict()[name], value, rtol=0, atol=0)
