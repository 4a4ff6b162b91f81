"""`anydistill.distill` for diffusion and flow models: the documented script runs on points and
denoisers held in memory; a call trains the weights the equivalent recipe (a points or tensor file)
trains; data or models the family cannot use are one RecipeError, nothing written."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

import anydistill
from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError
from anydistill.core.rundir import RunDir
from anydistill.models.flow_denoisers import conv_flow_denoiser, mlp_flow_denoiser
from anydistill.runner import run_recipe

QUIET = {"progress_bar": False}
SMALL = {"num_samples": 16, "teacher_steps": 2, "student_steps": [1], "straightness_steps": 2, "classifier_epochs": 1,
         "mmd_points": 16, "plots": False}

# The diffusion script of docs/python-api.md, verbatim: a flow teacher trained on 2-D points, then
# distilled by reflow into a student of its architecture (initialised from it) that samples in one step.
DIFFUSION_SCRIPT = """
import torch, anydistill
from sklearn.datasets import make_moons
from anydistill.models.flow_denoisers import mlp_flow_denoiser
points = torch.tensor(make_moons(2000, noise=0.05, random_state=0)[0], dtype=torch.float32)
teacher = anydistill.distill(teacher=mlp_flow_denoiser((2,), 0, hidden=64), data=points, method="diffusion-teacher", epochs=2).student
result = anydistill.distill(teacher, mlp_flow_denoiser((2,), 0, hidden=64), points, method="reflow", epochs=1)
print(result)
"""


def test_the_documented_script_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(DIFFUSION_SCRIPT, "<docs script>", "exec"), {})
    printed = capsys.readouterr().out
    assert "reflow (1 step)" in printed and "Run directory: runs/reflow-python" in printed
    assert (tmp_path / "runs" / "reflow-python" / "checkpoints" / "reflow" / "model.safetensors").is_file()


def _points(tmp_path: Path) -> tuple[dict, dict]:
    """(data section, the call's data) of 2-D points: a .npy file and the same array."""
    points = np.random.default_rng(0).normal(size=(96, 2)).astype(np.float32)
    np.save(tmp_path / "points.npy", points)
    return {"name": "points", "train": str(tmp_path / "points.npy"), "batch_size": 16}, {"data": torch.from_numpy(points), "batch_size": 16}


def _images(tmp_path: Path) -> tuple[dict, dict]:
    """(data section, the call's data) of labelled uint8 images [N, 1, 8, 8]: a tensor file and (X, y)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), np.arange(40) % 2
    save_file({"x": x, "y": y}, str(tmp_path / "digits.safetensors"))
    return {"name": "tensors-generation", "train": str(tmp_path / "digits.safetensors"), "batch_size": 8}, {"data": (x, y), "batch_size": 8}


# Teacher and student of one architecture: consistency distillation starts the student from the teacher.
MODELS = {"points": {"name": "mlp-denoiser", "hidden": 16, "depth": 1}, "images": {"name": "conv-denoiser", "width": 8}}


@pytest.mark.parametrize("kind", ["points", "images"])
def test_a_call_with_modules_trains_the_weights_the_recipe_trains(kind: str, tmp_path: Path) -> None:
    section, call = (_points if kind == "points" else _images)(tmp_path)
    recipe = load_recipe({"name": "same", "seed": 2, "data": section, "teacher": MODELS[kind], "student": MODELS[kind],
                          "trainer": {"max_epochs": 1, **QUIET}, "optimizer": {"name": "adam", "lr": 0.001}, "evaluation": SMALL,
                          "methods": {"consistency": {"num_scales": 4, "sample_steps": [1]}}})
    trained: dict[str, torch.nn.Module] = {}
    run_recipe(recipe, RunDir.create(tmp_path, "recipe"), trained=trained)
    # The runner's order: seeded, then the student, then the teacher.
    L.seed_everything(2, verbose=False)
    build = mlp_flow_denoiser if kind == "points" else conv_flow_denoiser
    shape, classes = ((2,), 0) if kind == "points" else ((1, 8, 8), 2)
    options = {k: v for k, v in MODELS[kind].items() if k != "name"}
    student, teacher = build(shape, classes, **options), build(shape, classes, **options)
    result = anydistill.distill(teacher, student, method="consistency", num_scales=4, sample_steps=[1], epochs=1, seed=2, trainer=QUIET,
                                optimizer="adam", evaluation=SMALL, run_dir=tmp_path / "python", **call)
    for name, value in trained["consistency"].state_dict().items():
        torch.testing.assert_close(result.student.state_dict()[name], value, rtol=0, atol=0)
    expected = yaml.safe_load((tmp_path / "recipe" / "metrics.json").read_text())
    metric = "swd@1" if kind == "points" else "fd@1"
    assert result.rows["consistency"][metric] == pytest.approx(expected["consistency"][metric])
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["data"]["name"] == "in-memory" and config["data"]["labelled"] is (kind == "images")


def test_bad_inputs_are_one_recipe_error_and_nothing_is_written(tmp_path: Path) -> None:
    teacher, student = mlp_flow_denoiser((2,), 0, hidden=8, depth=1), mlp_flow_denoiser((2,), 0, hidden=8, depth=1)
    runs = tmp_path / "runs"
    with pytest.raises(RecipeError) as error:
        anydistill.distill(teacher, student, ["a", "b"], method="reflow", runs=runs)
    assert error.value.problems == [(
        "distill(): data: got list; the diffusion methods accept 2-D points [N, 2] or images [N, C, H, W] as a tensor or array, "
        "optionally with labels as (X, y [N]); {'train': ..., 'val': ..., 'test': ...} of those; or a data-module name or "
        "{'name': ..., options} mapping (e.g. {'name': 'points', 'train': 'points.npy'}).")]
    with pytest.raises(RecipeError, match=r"data: the train samples have shape \[10, 8, 8\]; .* Add the channel axis"):
        anydistill.distill(teacher, student, torch.rand(10, 8, 8), method="reflow", runs=runs)
    with pytest.raises(RecipeError, match=r"data: the train split needs labels y \[N\] beside X \[N, \.\.\.\]; got y \[3\]"):
        anydistill.distill(teacher, student, (torch.randn(10, 2), torch.zeros(3)), method="reflow", runs=runs)
    with pytest.raises(RecipeError) as error:  # every problem at once: a bare network and an unknown parameter
        anydistill.distill(torch.nn.Linear(2, 2), student, torch.randn(10, 2), method="reflow", num_pair=8, runs=runs)
    assert [p.split(":")[1].strip() for p in error.value.problems] == ["teacher", "methods.reflow.num_pair"]
    assert "wrap the network as anydistill.models.flow_denoisers.Denoiser(net" in error.value.problems[0]
    assert not runs.exists()


def test_a_student_that_cannot_take_the_teachers_weights_is_refused_before_anything_runs(tmp_path: Path) -> None:
    points = torch.randn(300, 2)
    teacher, student = mlp_flow_denoiser((2,), 0, hidden=64), mlp_flow_denoiser((2,), 0, hidden=32)
    with pytest.raises(RecipeError, match=r"methods.reflow: 'reflow' starts the student from the teacher's weights, so the student "
                                          r"needs the teacher's architecture; \d+ tensors differ"):
        anydistill.distill(teacher, student, points, method="reflow", runs=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_teacher_trained_by_the_call_is_a_copy(tmp_path: Path) -> None:
    teacher = mlp_flow_denoiser((2,), 0, hidden=16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = anydistill.distill(teacher=teacher, data=torch.randn(300, 2), method="diffusion-teacher", epochs=1,
                                trainer={"progress_bar": False}, evaluation={"num_samples": 64}, run_dir=tmp_path / "run")
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in result.student.state_dict().items())
