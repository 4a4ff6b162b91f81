"""The contract every registered method passes: it builds from a shipped recipe, one training step
changes the student and not the teacher, a checkpoint round-trips, and a seed fixes the result."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml

from anydistill.catalog import METHODS, build_models, load_recipe, shipped_recipes
from anydistill.core.teacher import Teacher


# Small settings per family, so that one step takes about a second.
FAST = {
    # The synthetic set needs every class's real images (no train_limit); MTT's experts stay short.
    "dataset": ["student.ipc=1", "methods.mtt.num_experts=1", "methods.mtt.expert_train_epochs=3", "methods.mtt.max_start_epoch=1",
                "methods.mtt.expert_epochs=2"],
    "lm": ["data.train_limit=8", "data.batch_size=4", "data.eval_limit=4"],
    # Mirage mines graphs (no training): a small motif set.
    "mirage": ["data.num_graphs=100", "methods.mirage.support=25", "methods.mirage.support_step=5"],
}
FAST_DEFAULT = ["data.train_limit=64", "data.batch_size=32"]
# Methods whose first iterations leave the student alone (DisBack records its path first): a short
# warm-up in their shipped settings, and the steps after which the student has moved.
SHORT = {"disback": {"path_checkpoints": 1, "path_interval": 1}}
STEPS = {"disback": 2}
# Shipped recipe folders searched for a method's recipe: the fast ones of each family.
FAST_RECIPES = ("digits/", "shakespeare/", "graphs/motif-graphs")


def recipe_using(method_name: str):
    """The first shipped recipe that runs ``method_name`` (every method must have one)."""
    family = METHODS.get(method_name).family
    for name in shipped_recipes():
        if not name.startswith(FAST_RECIPES):
            continue
        if method_name not in (load_yaml_methods(name)):
            continue
        recipe = load_recipe(name, FAST.get(method_name, FAST.get(family, FAST_DEFAULT)))
        for component in recipe.methods.values():
            if component.name == method_name:
                return recipe, component
    pytest.fail(f"no shipped recipe under {', '.join(FAST_RECIPES)} runs the method '{method_name}'; add one there")


def load_yaml_methods(name: str) -> list[str]:
    """The method names a shipped recipe lists (labels are names unless ``name:`` says otherwise)."""
    raw = yaml.safe_load(shipped_recipes()[name].read_text())
    return [(entry or {}).get("name", label) for label, entry in (raw.get("methods") or {}).items()]


def build(recipe, component, seed: int):
    L.seed_everything(seed, verbose=False)
    student, teacher_model = build_models(recipe.data, recipe.student, recipe.teacher)
    trains_teacher = component.target.trains == "teacher"
    teacher = Teacher(teacher_model) if component.target.needs_teacher else None
    model = teacher_model if trains_teacher else student
    method = component.target(student=model, teacher=teacher, optimizer=recipe.optimizer, **{**component.kwargs, **SHORT.get(component.name, {})})
    return method, teacher


def fit(method, recipe, steps: int, ckpt_path=None):
    datamodule = recipe.data.target(**recipe.data.kwargs)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    if method.own_loop:  # the method draws its own batches from the set-up data module
        datamodule.setup()
        method.attach_data(datamodule)
        trainer.fit(method, ckpt_path=ckpt_path)
    else:
        trainer.fit(method, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method_name", METHODS.names())
def test_method_contract(method_name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # caches a method writes under the working directory (MTT's experts) stay here
    recipe, component = recipe_using(method_name)
    method, teacher = build(recipe, component, seed=0)
    student_before = clone_state(method.student)
    teacher_before = clone_state(teacher.model) if teacher else {}

    steps = STEPS.get(method_name, 1)
    trainer = fit(method, recipe, steps=steps)

    changed = [k for k, v in method.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert changed, "one training step left every student weight unchanged"
    if teacher:
        for key, value in teacher.model.state_dict().items():
            assert torch.equal(value, teacher_before[key]), f"the teacher's {key} changed"
        assert not any(p.requires_grad for p in teacher.model.parameters())

    # The checkpoint holds the method's own modules (student, adapters), never the teacher.
    path = tmp_path / "step1.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert set(saved) == set(method.state_dict())
    if teacher:
        teacher_ids = {id(p) for p in teacher.model.parameters()}
        assert not any(id(p) in teacher_ids for p in method.parameters())

    # Round trip: a differently seeded method restored from the checkpoint equals the original.
    restored, _ = build(recipe, component, seed=123)
    fit(restored, recipe, steps=steps, ckpt_path=path)  # max_steps already reached: restores, trains nothing
    for key, value in method.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), f"{key} differs after save/load"

    # Determinism: the same seed gives the same weights after a step.
    again, _ = build(recipe, component, seed=0)
    fit(again, recipe, steps=steps)
    for key, value in method.student.state_dict().items():
        assert torch.equal(again.student.state_dict()[key], value), f"{key} differs between two seeded runs"
