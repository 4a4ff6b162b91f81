"""Dataset-distillation recipes: validation reports what cannot run, in one line each."""

from __future__ import annotations

import logging

import pytest

from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError

RECIPE = "digits/dataset-distillation"


def problems(*overrides: str) -> str:
    with pytest.raises(RecipeError) as error:
        load_recipe(RECIPE, list(overrides))
    return str(error.value)


def test_shipped_recipe_validates() -> None:
    recipe = load_recipe(RECIPE)
    assert {c.name for c in recipe.methods.values()} == {"dc", "dsa", "dm", "mtt"}
    assert recipe.evaluation.name == "dataset" and recipe.resolved["evaluation"]["epochs"] == 300


def test_loops_outside_the_official_table_take_the_nearest_and_are_recorded() -> None:
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("anydistill.dataset.methods.dc")
    logger.addHandler(handler)
    try:
        recipe = load_recipe(RECIPE, ["student.ipc=3"])
    finally:
        logger.removeHandler(handler)
    assert any("no entry for ipc=3; using those of ipc=1" in line for line in logged), logged
    assert recipe.resolved["methods"]["dc"]["outer_loop"] == 1 and recipe.resolved["methods"]["dc"]["inner_loop"] == 1
    recipe = load_recipe(RECIPE, ["student.ipc=16"])  # nearest: 20 -> (20, 25)
    assert (recipe.resolved["methods"]["dsa"]["outer_loop"], recipe.resolved["methods"]["dsa"]["inner_loop"]) == (20, 25)
    recipe = load_recipe(RECIPE, ["student.ipc=3", "methods.dc.outer_loop=3", "methods.dc.inner_loop=5"])
    assert (recipe.resolved["methods"]["dc"]["outer_loop"], recipe.resolved["methods"]["dc"]["inner_loop"]) == (3, 5)


def test_a_network_student_is_refused() -> None:
    assert "synthetic-set" in problems("student={name: mlp}")


def test_evaluation_settings_are_checked() -> None:
    assert "evaluation.epochs" in problems("evaluation.epochs=many")
    assert "EvalProtocol" in problems("evaluation.num_models=0")
    assert "unknown key 'model'" in problems("evaluation.model=convnet")


def test_families_do_not_mix() -> None:
    assert "mix" in problems("methods.kd={}", "teacher={name: small-cnn}")


def test_ipc_above_a_class_size_is_refused_at_validation(tmp_path) -> None:
    import numpy as np

    np.savez(tmp_path / "t.npz", x=np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32), y=np.arange(40) % 4)
    (tmp_path / "r.yaml").write_text(f"name: ipc\nseed: 0\ndata: {{name: tensors, train: {tmp_path / 't.npz'}}}\n"
                                     "student: {name: synthetic-set, ipc: 9}\nmethods:\n  dm: {}\n")
    with pytest.raises(RecipeError, match=r"student.ipc=9 is more than some classes have .*set ipc to at most 7"):
        load_recipe(str(tmp_path / "r.yaml"))
