"""`distill`: objects in, a distilled student out, through the same recipe loader and runner as
the CLI (a call is a recipe built from its arguments; nothing here configures a method itself)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from torch import nn

from anydistill.api.inputs import Inputs
from anydistill.api.result import DistillResult
from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError
from anydistill.core.rundir import RunDir, free_name
from anydistill.registries import METHODS
from anydistill.runner import run_recipe

SOURCE = "distill()"  # how messages name the call, where a recipe file's path would be


def distill(
    teacher: Any = None,
    student: Any = None,
    data: Any = None,
    method: str = "kd",
    *,
    tokenizer: Any = None,
    mix: str | dict[str, Any] | None = None,
    label: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    data_options: dict[str, Any] | None = None,
    optimizer: str | dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    seed: int = 0,
    name: str | None = None,
    runs: str | Path = "runs",
    run_dir: str | Path | None = None,
    **method_params: Any,
) -> DistillResult:
    """Distill ``teacher`` into ``student`` on ``data`` with ``method``, evaluate every model with
    the family's evaluator, and return the trained student and the metrics table.

    The call is the recipe ``{data, teacher, student, trainer: {max_epochs: epochs}, optimizer,
    evaluation, methods: {label: {name: method, **method_params}}}``, checked by the recipe loader
    (every problem at once, in one `RecipeError`) and run by the CLI's runner into a new run
    directory; nothing is written when a check fails.

    Args:
        teacher: an ``nn.Module`` (used as is, frozen), a model name or ``{name: ..., options}``
            mapping, or the folder / ``model.safetensors`` of a run's exported model. None for
            methods without a teacher (``scratch``, most dataset-distillation methods). With ``mix``,
            several teachers by name: ``{"math": folder, "code": module}``.
        student: an ``nn.Module`` (copied for every method, so each starts from its weights), a
            model name or mapping (``"synthetic-set"`` / ``{"name": "synthetic-set", "ipc": 10}``
            for dataset distillation).
        data: tensors ``(X [N, ...], y [N])``, a map-style ``Dataset`` or a ``DataLoader`` of
            ``(x, y)`` pairs (read once into memory), a ``datasets.Dataset`` with a ``label``
            column, ``{"train": (X, y), "val": ..., "test": ...}`` (a missing split is held out of
            train: 10 % val, 20 % test), or a data-module name / ``{name: ..., options}``.
            Language models: a ``datasets.Dataset`` (or ``DatasetDict``, or a list of row dicts) in
            TRL's formats (``text``; ``prompt`` + ``completion``; ``messages``). Diffusion: points
            ``[N, 2]`` or images ``[N, C, H, W]``, optionally ``(X, y)`` for class-conditional models.
        method: a registered method name (``anydistill methods``).
        mix: how several teachers make one signal (the recipe's ``mix``: ``"route"``, ``"average"``,
            ``{"strategy": "weighted", "weights": {...}}``; docs/several-teachers.md); ``route``
            reads each row's teacher from ``data_options={"domain_column": ...}``.
        tokenizer: language models: a transformers tokenizer or the folder it was saved to
            (``data.tokenizer``); default: the teacher's folder when the teacher is given as one
            (a folder path or ``{name: hf-causal-lm, path: ...}``), else the student's.
        label: the method's label in the run (default: ``method``).
        epochs, batch_size: ``trainer.max_epochs`` and ``data.batch_size``.
        data_options: more of the data section's options, as in a recipe (``{"block_size": 128,
            "prompt_tokens": 16}`` for text held in memory: `LMDataset`'s; points and images:
            ``val_fraction``, ``split_seed``...; see docs/data.md).
        optimizer: a name (``"sgd"``) or the recipe's ``optimizer`` mapping.
        trainer, evaluation: the recipe's ``trainer`` and ``evaluation`` mappings.
        seed: the run's seed.
        name, runs: the run directory is ``runs/name`` (default name: ``<method>-python``,
            suffixed ``-2``, ``-3``... when taken).
        run_dir: the exact run directory to create instead (refused if it exists).
        method_params: the method's parameters (``temperature=4.0``), as in a recipe.

    Returns:
        A `DistillResult`: ``.student``, ``.metrics``, ``.run_dir``, ``.compare(...)``.

    Raises:
        RecipeError: every problem with the arguments, one line each.
        RunDirError: ``run_dir`` exists.
    """
    label = label or method
    known = METHODS.get(method) if method in METHODS else None
    family = known.family if known is not None else None
    inputs, problems, raw = Inputs(trains_teacher=known is not None and known.trains == "teacher"), [], {"name": name or f"{method}-python", "seed": seed}
    failed = set()
    if mix is not None:
        raw["mix"], teacher = mix, _several_teachers(teacher, inputs, family, raw, problems, failed)
    for role, value, convert in (("teacher", teacher, inputs.model), ("student", student, inputs.model), ("data", data, inputs.data)):
        if value is None:
            if role == "data":
                problems.append("data: give the data to distill on (tensors (X, y), a Dataset, a DataLoader, or a data-module name).")
                failed.add(role)
            continue
        try:
            if role != "data":
                raw[role] = convert(value, role)
                _check_module(value, role, family)
            else:
                raw[role] = convert(value, family, _data_options(family, tokenizer, value, raw, inputs))
        except ValueError as error:
            problems.append(str(error))
            failed.add(role)
    if "data" in raw:
        raw["data"].update({**(data_options or {}), **({"batch_size": batch_size} if batch_size is not None else {})})
    if trainer or epochs is not None:
        raw["trainer"] = {**(trainer or {}), **({"max_epochs": epochs} if epochs is not None else {})}
    if optimizer is not None:
        raw["optimizer"] = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer)
    if evaluation is not None:
        raw["evaluation"] = dict(evaluation)
    raw["methods"] = {label: {**({"name": method} if label != method else {}), **method_params}}
    recipe = _load(raw, inputs, problems, failed)
    directory = RunDir.create(Path(run_dir).parent, Path(run_dir).name) if run_dir is not None else RunDir.create(
        Path(runs), free_name(Path(runs), recipe.name))
    result = DistillResult(label, {}, {}, directory.path, tuple(recipe.evaluation.target.headline), session=Session(raw, inputs))
    _run(recipe, inputs, directory, result, resume=False)
    return result


def _several_teachers(teachers: Any, inputs: Inputs, family: str | None, raw: dict[str, Any], problems: list[str], failed: set[str]) -> None:
    """``raw["teachers"]`` from ``{name: teacher}`` (each as ``teacher`` takes one); returns None,
    the single ``teacher`` argument being used up."""
    if not isinstance(teachers, dict) or not teachers or "name" in teachers:
        problems.append("teacher: with mix, give the teachers by name: teacher={'math': model_or_folder, 'code': ...}.")
        failed.add("teachers")
        return None
    raw["teachers"] = {}
    for name, value in teachers.items():
        try:
            raw["teachers"][name] = inputs.model(value, f"teachers.{name}")
            _check_module(value, f"teachers.{name}", family)
        except ValueError as error:
            problems.append(str(error))
            failed.add("teachers")
    return None


def _data_options(family: str | None, tokenizer: Any, data: Any, raw: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    """The family's keywords for the data section: a language model's tokenizer, by default (for
    text in memory or an ``lm-dataset`` mapping) the teacher's folder, else the student's, as the
    recipes name it."""
    named = isinstance(data, str) or (isinstance(data, dict) and "name" in data)
    if tokenizer is None and family == "lm" and (not named or (isinstance(data, dict) and data["name"] == "lm-dataset")):
        first = next(iter((raw.get("teachers") or {}).values()), None)  # several teachers share the first's tokenizer
        tokenizer = inputs.folder_of(raw.get("teacher") or first) or inputs.folder_of(raw.get("student"))
    return {"tokenizer": tokenizer} if tokenizer is not None else {}


def _check_module(value: Any, role: str, family: str | None) -> None:
    """Refuse a module the family cannot read before anything runs: the recipe loader never sees
    one, as its builders make the right kind (a diffusion model names its schedule and prediction;
    a language model is a transformers model, with a config)."""
    if not isinstance(value, nn.Module):
        return
    if family == "diffusion" and not all(hasattr(value, a) for a in ("schedule", "prediction", "preconditioning")):
        raise ValueError(f"{role}: got a {type(value).__name__} that does not say how it is read; wrap the network as "
                         "anydistill.models.flow_denoisers.Denoiser(net, schedule='rectified-flow', prediction='velocity', "
                         "preconditioning='none') (or build it with mlp_flow_denoiser / conv_flow_denoiser).")
    if family == "lm" and not (hasattr(value, "config") and hasattr(value, "get_output_embeddings")):
        raise ValueError(f"{role}: got a {type(value).__name__}; the language-model methods take a transformers causal LM "
                         "(AutoModelForCausalLM.from_pretrained(folder)), its folder, or {'name': 'hf-causal-lm', 'path': folder}.")


def _load(raw: dict[str, Any], inputs: Inputs, problems: list[str], failed: set[str]) -> Any:
    """The validated recipe, or a `RecipeError` with the arguments' problems and the loader's
    (minus those about a section whose argument was already refused)."""
    with inputs.registered():
        try:
            recipe = load_recipe(raw, source=SOURCE)
        except RecipeError as error:
            prefix = f"{SOURCE}: "
            found = [p.removeprefix(prefix) for p in error.problems]
            problems += [p for p in found if p.split(".")[0].split(":")[0] not in failed]
    if problems:
        raise RecipeError([f"{SOURCE}: {p}" for p in problems])
    recipe.resolved = inputs.describe(recipe.resolved)
    return recipe


def _run(recipe: Any, inputs: Inputs, directory: RunDir, result: DistillResult, resume: bool) -> None:
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    with inputs.registered():
        if resume:  # compare(): the config grows by the new methods; run.json keeps how the run began
            directory.write_config(recipe.resolved)
        result.rows = run_recipe(recipe, directory, resume=resume, trained=result.models,
                                 command=f"python-api: anydistill.distill(method={result.label!r}) from {script}")


class Session:
    """What a result needs to train more methods or score its models again: the call's recipe
    mapping and its in-memory objects (registered again for each use)."""

    def __init__(self, raw: dict[str, Any], inputs: Inputs):
        self.raw, self.inputs = raw, inputs

    def compare(self, result: DistillResult, methods: list[str], params: dict[str, dict[str, Any]]) -> DistillResult:
        """The same call with more methods, resumed in the same run directory."""
        grown = copy.deepcopy(self.raw)
        taken = [m for m in methods if m in grown["methods"]]
        if taken:
            raise RecipeError([f"{SOURCE}: compare: '{m}' is already in this run; give another method." for m in taken])
        for method in methods:
            grown["methods"][method] = dict(params.get(method) or {})
        recipe = _load(grown, self.inputs, [], set())
        _run(recipe, self.inputs, RunDir(result.run_dir), result, resume=True)
        self.raw = grown
        return result

    def evaluate(self, result: DistillResult, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Every trained model of ``result`` scored by a fresh evaluator with ``settings`` over the
        call's ``evaluation`` (validated like a recipe's); the run directory is left as it is."""
        raw = copy.deepcopy(self.raw)
        raw["evaluation"] = {**(raw.get("evaluation") or {}), **settings}
        recipe = _load(raw, self.inputs, [], set())
        with self.inputs.registered():
            datamodule = recipe.data.target(**recipe.data.kwargs)
            datamodule.setup()
            evaluator = recipe.evaluation.target(data=datamodule, student_spec=recipe.resolved.get("student"), data_name=recipe.data.name,
                                                 **recipe.evaluation.kwargs)
            return {label: evaluator.evaluate(model, None, label) for label, model in result.models.items()}
