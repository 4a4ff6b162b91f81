"""The recipe loader: reads a recipe, checks every section against the signature of what the
registries (`anydistill.registries`, filled from the families' tables and plugins) return, builds
the models once on zeros, and reports every problem at once."""

from __future__ import annotations

import copy
import functools
import importlib.resources
import importlib.util
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from anydistill.core.errors import DataNotFoundError, MissingPackageError, RecipeError, first_line
from anydistill.core.method import DistillationMethod
from anydistill.core.recipe import (
    CacheSpec,
    OptimizerSpec,
    TrainerSpec,
    method_schedule,
    parse_recipe_file,
    read_yaml,
    validate_kwargs,
)
from anydistill.core.taps import capture_features, find_module
from anydistill.registries import DATA, EVALUATORS, METHODS, MODELS, methods_with
from anydistill.teachers_section import TeacherEntry, build_teacher_mixture, read_teachers, section_problems

if TYPE_CHECKING:
    from anydistill.core.registry import Registry

__all__ = ["DATA", "EVALUATORS", "METHODS", "MODELS", "Recipe", "build_models", "load_recipe"]

EVALUATOR_INJECTED = frozenset({"data", "student_spec", "data_name"})
METHOD_INJECTED = frozenset({"student", "teacher", "optimizer"})
MODEL_INJECTED = frozenset({"input_shape", "num_classes"})


@dataclass
class Component:
    """A validated recipe section: the registry ``name``, what it resolves to, and its kwargs."""

    name: str
    target: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_epochs: int | None = None  # a method's own schedule, over the recipe's trainer/optimizer
    optimizer: OptimizerSpec | None = None


@dataclass
class Recipe:
    """A fully validated recipe; ``resolved`` is the dict saved as the run's config.yaml."""

    source: str
    name: str
    seed: int
    data: Component
    student: Component | None
    teacher: Component | None
    teacher_checkpoint: str | None
    trainer: TrainerSpec
    optimizer: OptimizerSpec
    cache: CacheSpec
    evaluation: Component
    methods: dict[str, Component]
    resolved: dict[str, Any]
    teacher_server: dict[str, Any] | None = None  # `teacher: {server: ...}`: ServedTeacher's settings (no teacher module here)
    teachers: dict[str, TeacherEntry] | None = None  # `teachers: {name: {...}}`, mixed by `mix`
    mix: Any = None  # core.recipe.MixSpec
    unchecked: list[str] = field(default_factory=list)  # files not on this machine: the checks that needed them were skipped


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped with the package, by name relative to the recipes folder (no suffix)."""
    root = Path(str(importlib.resources.files("anydistill") / "recipes"))
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}


def resolve_recipe_path(path_or_name: str) -> Path:
    """A recipe file path, or the name of a shipped recipe (``mnist/demo``)."""
    path = Path(path_or_name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    return shipped_recipes().get(path_or_name, path)


def _component(
    section: dict[str, Any], registry: Registry, where: str, problems: list[str], injected: frozenset[str], kind: type | None = None
) -> Component | None:
    kwargs = dict(section)
    name = kwargs.pop("name", None)
    if not isinstance(name, str):
        problems.append(f"{where}.name: every {registry.kind} section needs 'name', one of: {', '.join(registry.names())}.")
        return None
    try:
        target = registry.get(name)
    except LookupError as error:
        problems.append(f"{where}.name: {error}")
        return None
    if kind is not None and not (isinstance(target, type) and issubclass(target, kind)):
        problems.append(f"{where}.name: '{name}' is not a {kind.__name__} subclass, so it cannot be used as a {registry.kind}.")
        return None
    if not callable(target):
        problems.append(f"{where}.name: '{name}' is not callable, so it cannot build a {registry.kind}.")
        return None
    values, found = validate_kwargs(target, kwargs, owner=f"{registry.kind} '{name}'", where=where, injected=injected)
    problems.extend(found)
    return Component(name, target, values) if not found else None


def _dry_forward(model: Any, input_shape: tuple[int, ...], taps: list[str]) -> tuple[dict[str, torch.Size], Any]:
    """Shapes of the tapped outputs, and the output, on a zero batch of two (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_features(model, taps) as features:
            out = model(torch.zeros(2, *input_shape))
    finally:
        model.train(was_training)
    return {path: value.shape for path, value in features.items()}, out


def _output_width(model: Any, input_shape: tuple[int, ...]) -> int | None:
    """The size of the last dimension of ``model``'s output on a zero batch of two."""
    out = _dry_forward(model, input_shape, [])[1]
    return out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() >= 2 else None


def _architecture_mismatch(label: str, name: str, teacher: Any, student: Any) -> list[str]:
    """A problem when the student cannot take the teacher's weights (a method that starts from them)."""
    theirs = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if not differ:
        return []
    first = differ[0]
    return [f"methods.{label}: '{name}' starts the student from the teacher's weights, so the student needs the teacher's "
            f"architecture; {len(differ)} tensors differ (e.g. '{first}': teacher {theirs.get(first, 'absent')}, student "
            f"{ours.get(first, 'absent')}). Give the student the teacher's options."]


def _check_method(
    label: str, component: Component, teacher: Any, student: Any, input_shape: tuple[int, ...], max_epochs: int,
    datamodule: Callable[[], Any], problems: list[str], data_findings: dict[str, list[str]], served: Any = None,
    several: Any = None,
) -> None:
    """Build the method (constructors only store hyperparameters), check that its module paths
    exist, run the models once on zeros and let the method check the shapes it will see and, when
    it asks to (`DistillationMethod.data_problems`), the set-up data (``datamodule()``). Data
    problems go to ``data_findings`` (problem -> labels): several methods often share one. ``served``
    is an unconnected served teacher, ``several`` the recipe's teacher mixture, given to the methods
    that take them for their checks."""
    target = component.target
    try:
        # A served teacher (not connected: nothing is asked of it here) lets the method check its settings against one.
        given = several if several is not None and target.several_teachers else served if target.served_teacher else None
        method = target(student=teacher if target.trains == "teacher" else student, teacher=given, **component.kwargs)
    except (ValueError, TypeError) as error:
        problems.append(f"methods.{label}: {error}")
        return
    component.kwargs.update(method.resolved_params())  # saved in config.yaml: a rerun needs no table lookup
    if target.data_problems is not DistillationMethod.data_problems:
        try:
            data = datamodule()
        except DataNotFoundError:
            data = None  # files not on this machine (e.g. a GPU recipe validated on a laptop): the run repeats these checks
        except Exception as error:  # noqa: BLE001 - any failure to load the data is a recipe problem, told in one line
            problems.append(f"data: setting up the data module failed: {first_line(error)}")
            return
        for problem in method.data_problems(data, teacher if target.needs_teacher else None) if data is not None else ():
            data_findings.setdefault(problem, []).append(label)
    taps = {"teacher": (teacher, method.teacher_taps()), "student": (student, method.student_taps())}
    found = []
    for role, (model, paths) in taps.items():
        for path in paths if model is not None else []:
            try:
                find_module(model, path)
            except LookupError as error:
                found.append(f"methods.{label}: {role} layer: {error}")
    if method.starts_from_teacher() and teacher is not None and student is not None:
        found += _architecture_mismatch(label, component.name, teacher, student)
    if found:
        problems.extend(found)
        return
    shapes = {role: _dry_forward(model, input_shape, paths)[0] if model is not None and paths else {} for role, (model, paths) in taps.items()}
    for problem in method.recipe_problems(teacher_shapes=shapes["teacher"], student_shapes=shapes["student"], max_epochs=max_epochs):
        problems.append(f"methods.{label}: {problem}")


def _check_trainer(spec: TrainerSpec, problems: list[str]) -> None:
    """Let Lightning refuse what it cannot run here (a missing GPU, an uninstalled strategy)."""
    import lightning as L

    if spec.logger == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        problems.append(f"trainer.logger: {MissingPackageError('tensorboard', 'tensorboard', 'trainer.logger: tensorboard')}")
    if spec.logger == "mlflow" and importlib.util.find_spec("mlflow") is None:
        problems.append("trainer.logger: 'mlflow' needs the MLflow client, which is not installed. "
                        "Install it with: pip install 'anydistill[mlflow]' (or mlflow-skinny).")
    try:
        L.Trainer(**spec.hardware(), logger=False, enable_checkpointing=False, enable_progress_bar=False)
    except Exception as error:  # Lightning raises several types; each is a recipe problem here
        first = first_line(error)
        problems.append(f"trainer: Lightning cannot run these settings here: {first}")


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._#@+-]*$")  # a label names files under the run directory


def load_recipe(path_or_name: str | dict[str, Any], overrides: list[str] = (), *, source: str = "python") -> Recipe:
    """Read, override and validate a recipe (a file, a shipped name, or the recipe's mapping
    itself, called ``source`` in messages); every problem is reported at once.

    Raises:
        RecipeError: one line per problem (bad YAML, unknown key or name, wrong type or range,
            missing teacher, cache used with augmentation, module paths that do not exist, tapped
            shapes a method cannot use, trainer settings Lightning cannot run here...).
    """
    if isinstance(path_or_name, dict):
        raw = copy.deepcopy(path_or_name)  # overrides edit it in place
    else:
        path = resolve_recipe_path(path_or_name)
        source, raw = str(path), read_yaml(path)
    parsed, problems = parse_recipe_file(raw, list(overrides))
    # Components are checked from the raw sections even when the top level has problems, so that
    # one run of `anydistill validate` lists everything there is to fix.
    raw = raw if isinstance(raw, dict) else {}

    def raw_section(key: str) -> dict[str, Any] | None:
        return raw.get(key) if isinstance(raw.get(key), dict) else None

    data = _component(raw_section("data"), DATA, "data", problems, frozenset()) if raw_section("data") is not None else None
    student = _component(raw_section("student"), MODELS, "student", problems, MODEL_INJECTED) if raw_section("student") is not None else None
    teacher_section = dict(raw_section("teacher") or {})
    checkpoint = teacher_section.pop("checkpoint", None)
    served, served_card = served_teacher_settings(teacher_section, problems) if "server" in teacher_section else (None, {})
    teacher = (_component(teacher_section, MODELS, "teacher", problems, MODEL_INJECTED)
               if raw_section("teacher") is not None and served is None and "server" not in teacher_section else None)
    if checkpoint is not None and not Path(str(checkpoint)).is_file():
        problems.append(f"teacher.checkpoint: no such file '{checkpoint}'. Point it at a model.safetensors written by a 'teacher' run.")
    entries = (read_teachers(raw["teachers"], lambda section, where: _component(section, MODELS, where, problems, MODEL_INJECTED),
                             served_teacher_settings, problems) if raw.get("teachers") is not None else {})

    methods: dict[str, Component] = {}
    if not raw_section("methods"):
        problems.append("methods: a recipe needs at least one method, e.g. `methods: {scratch: {}, kd: {}}`.")
    for label, entry in (raw_section("methods") or {}).items():
        if not _LABEL.match(str(label)):
            problems.append(f"methods.{label}: a label names files of the run; use letters, digits and . _ # @ + - only.")
            continue
        if not isinstance(entry, dict | None):
            problems.append(f"methods.{label}: expected a mapping of the method's parameters, got {entry!r}.")
            continue
        entry = dict(entry or {})
        max_epochs, optimizer, found = method_schedule(entry, raw.get("optimizer"), f"methods.{label}")
        problems += found
        component = _component({"name": label, **entry}, METHODS, f"methods.{label}", problems, METHOD_INJECTED, DistillationMethod)
        if component is not None:
            component.max_epochs, component.optimizer = max_epochs, optimizer
            methods[label] = component

    order = list(methods)
    for position, (label, component) in enumerate(methods.items()):
        trains_teacher = component.target.trains == "teacher"
        if label == "teacher" and not trains_teacher:
            problems.append("methods.teacher: the label 'teacher' is reserved for the model the students learn from; rename this method.")
        if trains_teacher and position != 0:
            problems.append(f"methods.{label}: the method that trains the teacher must come first (now after {', '.join(order[:position])}).")
        if trains_teacher and (teacher is None or checkpoint):
            problems.append(f"methods.{label}: '{component.name}' trains the recipe's teacher architecture: give `teacher: {{name: ...}}` without a checkpoint.")
        if component.target.trains == "student" and raw_section("student") is None:
            problems.append(f"methods.{label}: method '{component.name}' trains a student; add a `student:` section.")
        if component.target.needs_teacher and raw_section("teacher") is None and raw.get("teachers") is None:
            problems.append(f"methods.{label}: method '{component.name}' distills from a teacher; add a `teacher:` section.")
        if "server" in teacher_section and (trains_teacher or (component.target.needs_teacher and not component.target.served_teacher)):
            able = ", ".join(methods_with("served_teacher"))
            problems.append(f"methods.{label}: method '{component.name}' needs the teacher's module in this process; a served teacher "
                            f"(teacher.server) works with {able}.")

    problems += section_problems(raw, methods, lambda: methods_with("several_teachers"))
    if parsed is not None and parsed.mix is not None and entries:
        from anydistill.lm.teacher_mixture import mix_problems

        problems += mix_problems(list(entries), parsed.mix.strategy, parsed.mix.weights, parsed.mix.space)
    families = sorted({c.target.family for c in methods.values()})
    if len(families) > 1:
        problems.append(f"methods: a recipe distills one family of models; these methods mix {', '.join(families)}. Split the recipe.")
    family = families[0] if len(families) == 1 else None
    evaluation = None
    section = raw.get("evaluation")
    # A method may name its own evaluator (graph sets are not scored like images); one per recipe.
    scorers = sorted({c.target.evaluator or family for c in methods.values()}) if family is not None else []
    problems += [f"methods: these methods need different evaluators ({', '.join(scorers)}); split the recipe."] if len(scorers) > 1 else []
    if len(scorers) == 1 and isinstance(section, dict | None):  # another type: parse_recipe_file reported it
        try:
            evaluator = EVALUATORS.get(scorers[0])
        except LookupError:
            problems.append(f"methods: no evaluator is registered for the '{family}' family; register one in anydistill.registries.EVALUATORS.")
        else:
            values, found = validate_kwargs(evaluator, dict(section or {}), owner=f"the {family} evaluator",
                                            where="evaluation", injected=EVALUATOR_INJECTED)
            problems.extend(found)
            problems.extend(f"evaluation: {p}" for p in ([] if found else evaluator.settings_problems(values)))
            evaluation = Component(family, evaluator, values)

    if parsed is not None and parsed.cache.enabled and family not in (None, "classifier"):
        hint = " (lm-kd caches its teacher's top-k log-probs with `topk: K`)" if family == "lm" else ""
        problems.append(f"cache.enabled: the teacher signal cache serves classifier logits; the {family} family cannot use it{hint}. "
                        "Set cache.enabled: false.")

    missing = data.target.missing_package() if data is not None else None
    if missing:
        problems.append(f"data: {missing}")
    if parsed is not None and parsed.cache.enabled and data is not None and data.target(**data.kwargs).inputs_vary_per_epoch:
        problems.append(
            "cache.enabled: a teacher signal cache is invalid when the inputs change every epoch (data.augment: true): "
            "stored teacher outputs would not match them. Set cache.enabled: false to run the teacher online, or data.augment: false."
        )
    if parsed is not None:
        _check_trainer(parsed.trainer, problems)
    unchecked: list[str] = []  # files not on this machine: the checks needing them are skipped, named, and repeated by the run
    if not problems and parsed is not None and data is not None:
        @functools.cache
        def set_up_data() -> Any:  # set up only for methods that check the data (or shapes read from files), once
            module = data.target(**data.kwargs)
            module.setup()
            return module

        files_data = None  # read here when its shapes come from its files or its labelled rows are drawn
        if shapes_known_after_setup(data) or data.kwargs.get("labelled_count") is not None:
            try:
                files_data = set_up_data()
            except DataNotFoundError as error:
                unchecked.append(first_line(error))
            except RecipeError as error:
                problems += error.problems
            except Exception as error:  # unreadable files: one line, whatever the reader raised
                problems.append(f"data: {first_line(error)}")
    if not problems and not unchecked and parsed is not None and data is not None:
        input_shape = data_shapes(data, files_data)["input_shape"]
        try:
            student_model, teacher_model = build_models(data, student, teacher, files_data)
            if checkpoint:
                load_teacher_weights(teacher_model, str(checkpoint), teacher.name)
            num_classes = data_shapes(data, files_data)["num_classes"]
            for role, model in (("student", student_model), ("teacher", teacher_model)) if family == "classifier" else ():  # other families take other inputs
                width = _output_width(model, input_shape) if model is not None else None
                if width is not None and num_classes and width != num_classes:
                    problems.append(f"{role}: the model gives {width} outputs per row, but the data has {num_classes} classes; "
                                    f"build it with num_classes={num_classes} (or give data with {width} classes).")
        except DataNotFoundError as error:
            unchecked.append(first_line(error))
        except Exception as error:  # any failure to build or run a model is a recipe problem, told in one line
            problems.append(f"models: building or running the models on a {input_shape} input failed: {first_line(error)}")
        else:
            for path in parsed.cache.features if parsed.cache.enabled else []:
                try:
                    find_module(teacher_model, path)
                except (LookupError, AttributeError) as error:
                    problems.append(f"cache.features: {error}")

            data_findings: dict[str, list[str]] = {}
            served_teacher = _served_teacher(served)
            mixture = _teacher_mixture(entries, parsed.mix, data, files_data, set_up_data, student_model, problems)
            for label, component in methods.items():
                _check_method(label, component, teacher_model, student_model, input_shape, component.max_epochs or parsed.trainer.max_epochs, set_up_data,
                              problems, data_findings, served_teacher, mixture)
            for remote in (served_teacher, mixture):
                if remote is not None:
                    remote.close()
            problems += [f"methods.{', '.join(labels)}: {problem}" for problem, labels in data_findings.items()]
            if served is not None:
                from anydistill.lm.served.use import served_problems

                problems += [f"teacher.server: {p}" for p in served_problems(served["server"], served_card["vocab_size"],
                                                                             served_card["max_model_len"], set_up_data())]
            if evaluation is not None:
                problems += [f"evaluation: {problem}" for problem in
                             evaluation.target.model_problems(evaluation.kwargs, teacher_model=teacher_model, student_model=student_model)]
    if problems or parsed is None or evaluation is None:
        raise RecipeError([f"{source}: {p}" for p in problems])
    resolved = parsed.model_dump(mode="json")
    # Names registered from Python are saved as import paths, so `anydistill validate config.yaml` works.
    resolved["data"] = {"name": DATA.saved_name(data.name), **data.kwargs}
    if student is not None:
        resolved["student"] = {"name": MODELS.saved_name(student.name), **student.kwargs}
    if teacher is not None:
        resolved["teacher"] = {"name": MODELS.saved_name(teacher.name), **teacher.kwargs, **({"checkpoint": checkpoint} if checkpoint else {})}
    if served is not None:
        resolved["teacher"] = dict(served)
    if entries:
        resolved["teachers"] = {name: entry.resolved() for name, entry in entries.items()}
    resolved["evaluation"] = dict(evaluation.kwargs)
    resolved["methods"] = {label: {"name": METHODS.saved_name(c.name), **c.kwargs, **({"max_epochs": c.max_epochs} if c.max_epochs else {}),
                                   **({"optimizer": c.optimizer.model_dump(mode="json")} if c.optimizer else {})}
                           for label, c in methods.items()}
    return Recipe(
        source, parsed.name, parsed.seed, data, student, teacher, checkpoint, parsed.trainer, parsed.optimizer, parsed.cache,
        evaluation, methods, resolved, served, entries or None, parsed.mix, unchecked,
    )


def _served_teacher(settings: dict[str, Any] | None) -> Any:
    """An unconnected `ServedTeacher` of the recipe's settings, or None."""
    if settings is None:
        return None
    from anydistill.lm.served.client import ServedTeacher

    return ServedTeacher(**settings)


def _teacher_mixture(entries: dict[str, TeacherEntry], mix: Any, data: Component, files_data: Any, set_up_data: Callable[[], Any],
                     student_model: Any, problems: list[str]) -> Any:
    """The recipe's several teachers built (checkpoints loaded, servers asked once) and checked
    against the set-up data and the student (`TeacherMixture.problems`), or None without them."""
    if not entries or mix is None:
        return None
    shapes = data_shapes(data, files_data)
    try:
        mixture = build_teacher_mixture(entries, mix, lambda c: c.target(**shapes, **c.kwargs), load_teacher_weights, connect=True)
    except RecipeError as error:
        problems += error.problems
        return None
    try:
        datamodule = set_up_data()
    except Exception:  # noqa: BLE001 - the methods' checks report the data's own problem
        return mixture
    problems += mixture.problems(datamodule, student_model)
    return mixture


def served_teacher_settings(section: dict[str, Any], problems: list[str], where: str = "teacher") -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A ``teacher: {server: URL, ...}`` section checked against `ServedTeacher`'s parameters, and the
    server asked once (`ServedTeacher.connect`): unreachable, refusing or mismatched is one problem
    line. Returns the settings and what the server said (vocabulary size, positions)."""
    from anydistill.lm.served.client import ServedTeacher, ServerError

    values, found = validate_kwargs(ServedTeacher, dict(section), owner="the served teacher", where=where)
    problems += found
    if found:
        return None, {}
    try:
        client = ServedTeacher(**values)
        try:
            card = client.connect()
        finally:
            client.close()
    except ServerError as error:
        problems.append(f"{where}.server: {error}")
        return None, {}
    return values, {"vocab_size": client.vocab_size, "max_model_len": card.get("max_model_len")}


def load_teacher_weights(model: Any, checkpoint: str, name: str) -> None:
    """Load a ``model.safetensors`` export into the teacher architecture ``model``.

    Raises:
        ValueError: one line saying why it does not fit and what to change.
    """
    try:
        model.load_state_dict(load_file(checkpoint))
    except (SafetensorError, OSError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(
            f"teacher.checkpoint {checkpoint} does not load into '{name}' ({first}); give the architecture "
            f"options it was trained with (see the model.json beside it)."
        ) from None


def shapes_known_after_setup(data: Component) -> bool:
    """Whether the data source learns ``input_shape`` / ``num_classes`` from its files (instance
    properties, e.g. a user's CSV) rather than declaring them (class attributes, the shipped sets)."""
    return any(isinstance(inspect.getattr_static(data.target, key, None), property) for key in MODEL_INJECTED)


def data_shapes(data: Component, datamodule: Any = None) -> dict[str, Any]:
    """``{"input_shape": (C, H, W) or (L,), "num_classes": K}`` of the data: from the set-up
    ``datamodule`` when given, else from the class, setting up an instance only when the shapes
    come from the files."""
    if datamodule is None and shapes_known_after_setup(data):
        datamodule = data.target(**data.kwargs)
        datamodule.setup()
    source = datamodule if datamodule is not None else data.target
    return {"input_shape": tuple(source.input_shape), "num_classes": source.num_classes}


def build_models(data: Component, student: Component | None, teacher: Component | None, datamodule: Any = None) -> tuple[Any, Any]:
    """Instantiate the student and (untrained or pretrained) teacher models for the data's shapes
    (read from ``datamodule``, the set-up data module, when given; see `data_shapes`)."""
    shapes = data_shapes(data, datamodule)
    student_model = student.target(**shapes, **student.kwargs) if student else None
    teacher_model = teacher.target(**shapes, **teacher.kwargs) if teacher else None
    return student_model, teacher_model
