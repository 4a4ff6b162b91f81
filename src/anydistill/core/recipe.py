"""Recipes: YAML files whose keys are the typed constructor parameters of the components they name.

Loading is two passes, both collecting every problem before raising one `RecipeError`:
1. the file itself: YAML syntax, `--set` overrides, the top-level sections (`parse_recipe_file`);
2. each named component against the signature of what the registry returns (`validate_kwargs`).
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from anydistill.core.errors import RecipeError

# Constrained types for method signatures: a recipe value outside the range is a validation error.
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]

# PyYAML follows YAML 1.1, where `1e-3` is a string; users write learning rates that way.
_FLOAT = re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float."""


RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TrainerSpec(_Section):
    """Lightning `Trainer` settings a recipe may set (all others keep Lightning's defaults)."""

    max_epochs: int = Field(default=5, ge=1)
    max_steps: int = Field(default=-1, ge=-1)
    devices: int = Field(default=1, ge=1)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "cpu"
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp", "deepspeed"] = "auto"
    num_nodes: int = Field(default=1, ge=1)
    precision: Literal["32-true", "16-mixed", "bf16-mixed", "bf16-true"] = "32-true"
    accumulate_grad_batches: int = Field(default=1, ge=1)
    gradient_clip_val: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # A number of batches (int >= 1) or a fraction of the epoch (float in (0, 1]).
    limit_train_batches: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)] | None = None
    log_every_n_steps: int = Field(default=50, ge=1)
    deterministic: bool = False
    progress_bar: bool = True
    # Lightning's CSV logger always writes logs/<label>/metrics.csv (the report reads it); a second
    # logger may be added: TensorBoard event files, or a local MLflow file store under the run.
    logger: Literal["csv", "tensorboard", "mlflow"] = "csv"

    def hardware(self) -> dict[str, Any]:
        """The `lightning.Trainer` arguments that say where and in what precision to run."""
        return {"accelerator": self.accelerator, "devices": self.devices, "num_nodes": self.num_nodes,
                "strategy": self.strategy, "precision": self.precision}


class OptimizerSpec(_Section):
    """The student's optimizer and learning-rate schedule (shared by every method of a recipe)."""

    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    step_gamma: float = Field(default=0.1, gt=0)


class CacheSpec(_Section):
    """Teacher signal cache: teacher outputs computed once, stored on disk, reused across runs."""

    enabled: bool = False
    dir: str = ".anydistill-cache"
    features: list[str] = Field(default_factory=list)


class MixSpec(_Section):
    """How several teachers (``teachers:``) make one signal (`anydistill.lm.teacher_mixture`);
    ``mix: route`` is short for ``mix: {strategy: route}``. Weights are checked there (one per
    teacher, positive, summing to 1)."""

    strategy: Literal["route", "average", "weighted"]
    weights: dict[str, Any] | None = None
    space: Literal["probs", "logprobs"] = "probs"

    @pydantic.model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"strategy": value} if isinstance(value, str) else value


class RecipeFile(_Section):
    """The top level of a recipe. Component sections hold a registry `name` plus its parameters."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    data: dict[str, Any]
    student: dict[str, Any] | None = None
    teacher: dict[str, Any] | None = None
    teachers: dict[str, dict[str, Any]] | None = None  # several teachers, by name, mixed by `mix`
    mix: MixSpec | None = None
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    evaluation: dict[str, Any] | None = None  # settings of the family's evaluator
    methods: dict[str, dict[str, Any] | None]


def _render(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _merge_union_errors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One error per field for a value that fits none of a union's members.

    pydantic reports ``int | float | None`` as one error per member, located at
    ``(field, "int")``, ``(field, "float")``...; users need one line: "must be int, float or none".
    """
    by_field: dict[Any, list[dict[str, Any]]] = {}
    for item in items:
        by_field.setdefault(item["loc"][0] if item["loc"] else None, []).append(item)
    merged = []
    for field, group in by_field.items():
        members = [i["loc"][1] for i in group if len(i["loc"]) == 2 and isinstance(i["loc"][1], str)]
        if len(group) > 1 and len(members) == len(group):
            members = [m.replace("-", " ").split("[")[0] for m in members]
            merged.append({**group[0], "loc": (field,), "msg": f"Input should be one of: {', '.join(members)}"})
        else:
            merged.extend(group)
    return merged


def _pydantic_problems(items: list[dict[str, Any]], owner: str, where: str, fields: list[str]) -> list[str]:
    """One line per pydantic error (``ValidationError.errors()`` items), in the convention's shape."""
    problems = []
    for item in _merge_union_errors(items):
        loc = ".".join(str(part) for part in item["loc"])
        key = str(item["loc"][0]) if item["loc"] else ""
        place = f"{where}.{loc}" if where else loc
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            problems.append(f"{place}: unknown key '{key}' for {owner}{hint} Known keys: {', '.join(fields) or 'none'}.")
        elif item["type"] == "missing":
            problems.append(f"{place}: the '{key}' parameter of {owner} is required.")
        else:
            must = item["msg"].replace("Input should be", "must be").replace("Input", "it")
            problems.append(
                f"{place}: the '{loc}' parameter of {owner} {must[0].lower() + must[1:]}. Got {_render(item.get('input'))}."
            )
    return problems


def parameters_of(fn: Callable[..., Any], injected: frozenset[str]) -> dict[str, tuple[Any, Any]]:
    """The user-settable parameters of ``fn``: name -> (annotation, default or ...). A class whose
    ``__init__`` passes ``**options`` on to its base's (a method extending another) also has the
    base's parameters that it does not name itself."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target, include_extras=True)
    fields: dict[str, tuple[Any, Any]] = {}
    passes_on = False
    for name, param in inspect.signature(fn).parameters.items():
        passes_on |= param.kind == param.VAR_KEYWORD
        if name in injected or name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    if passes_on and inspect.isclass(fn):
        base = next((b for b in fn.__mro__[1:] if "__init__" in vars(b)), object)
        if base is not object:
            fields = {**{k: v for k, v in parameters_of(base, injected).items() if k not in fields}, **fields}
    return fields


def validate_kwargs(
    fn: Callable[..., Any], kwargs: dict[str, Any], *, owner: str, where: str, injected: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """Check ``kwargs`` against the typed signature of ``fn``.

    Args:
        fn: a class (its ``__init__``) or function whose annotated parameters are the schema.
        kwargs: the recipe's values.
        owner: how errors name the component, e.g. "method 'kd'".
        where: dotted location in the recipe, e.g. "methods.kd".
        injected: parameters the engine passes itself (``student``, ``teacher``...): not settable.

    Returns:
        (validated kwargs with defaults filled, problems); problems is empty when valid.
    """
    try:
        fields = parameters_of(fn, injected)
    except (TypeError, ValueError, NameError) as error:
        return {}, [f"{where}: {owner} has no usable signature ({error}); name a class or function with typed parameters."]
    model = pydantic.create_model(  # type: ignore[call-overload]
        f"Params_{owner}", __config__=ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True), **fields
    )
    try:
        validated = model.model_validate(kwargs)
    except pydantic.ValidationError as error:
        return {}, _pydantic_problems(error.errors(), owner, where, list(fields))
    return {name: getattr(validated, name) for name in fields}, []


def apply_override(raw: dict[str, Any], assignment: str) -> str | None:
    """Apply one ``key.sub=value`` override in place; return a problem line or None."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        return f"--set {assignment}: expected key=value, e.g. --set methods.kd.temperature=2.0."
    try:
        value = yaml.load(text, Loader=RecipeLoader) if text else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"--set {assignment}: '{part}' is a value, not a section, so '{key}' cannot be set."
        node = child
    node[parts[-1]] = value
    return None


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; syntax errors become a one-line `RecipeError` with the position."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError([f"{path}: no such recipe file. Check the path, or run `anydistill recipes` to list shipped ones."]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise RecipeError([f"{path}: cannot read it as a text file ({error.__class__.__name__})."]) from None
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError([f"{path}: YAML syntax error{at}: {problem}. Fix the file and run it again."]) from None


def parse_recipe_file(raw: Any, overrides: list[str] = ()) -> tuple[RecipeFile | None, list[str]]:
    """Validate the top level of a recipe, after applying ``--set`` overrides to ``raw`` in place.

    Returns:
        (the parsed recipe, or None if it has problems; one line per problem).
    """
    if not isinstance(raw, dict):
        return None, ["a recipe must be a YAML mapping with keys name, data, student, teacher, methods, ..."]
    problems = [p for p in (apply_override(raw, a) for a in overrides) if p]
    try:
        parsed = RecipeFile.model_validate(raw)
    except pydantic.ValidationError as error:
        parsed = None
        sections = {"trainer": TrainerSpec, "optimizer": OptimizerSpec, "cache": CacheSpec, "mix": MixSpec}
        top: list[dict[str, Any]] = []
        nested: dict[str, list[dict[str, Any]]] = {}
        for item in error.errors():
            section = str(item["loc"][0]) if item["loc"] else ""
            if section in sections and len(item["loc"]) > 1:
                nested.setdefault(section, []).append({**item, "loc": item["loc"][1:]})
            else:
                top.append(item)
        problems += _pydantic_problems(top, "a recipe", "", list(RecipeFile.model_fields))
        for section, items in nested.items():
            problems += _pydantic_problems(items, f"the '{section}' section", section, list(sections[section].model_fields))
    return (None if problems else parsed), problems


SCHEDULE_KEYS = ("max_epochs", "optimizer")  # what a method entry may set for itself, over the recipe's


def method_schedule(entry: dict[str, Any], recipe_optimizer: Any, where: str) -> tuple[int | None, OptimizerSpec | None, list[str]]:
    """Take a method entry's own ``max_epochs`` and ``optimizer`` out of ``entry`` (in place).

    A teacher trained in the recipe often needs more epochs than its students, and a method a
    different learning rate: ``methods.teacher: {max_epochs: 30, optimizer: {lr: 3e-3}}``. The
    entry's optimizer keys are laid over the recipe's ``optimizer`` section (raw mapping).

    Returns:
        (max_epochs or None, the merged OptimizerSpec or None, one line per problem).
    """
    problems: list[str] = []
    max_epochs = entry.pop("max_epochs", None)
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1):
        problems.append(f"{where}.max_epochs: the method's own number of epochs must be an integer >= 1, got {max_epochs!r}.")
        max_epochs = None
    optimizer = None
    if "optimizer" in entry:
        own = entry.pop("optimizer")
        if not isinstance(own, dict):
            problems.append(f"{where}.optimizer: expected a mapping of optimizer settings (e.g. {{lr: 0.01}}), got {own!r}.")
        else:
            try:
                optimizer = OptimizerSpec.model_validate({**(recipe_optimizer if isinstance(recipe_optimizer, dict) else {}), **own})
            except pydantic.ValidationError as error:
                problems += _pydantic_problems(error.errors(), f"the '{where}.optimizer' section", f"{where}.optimizer",
                                               list(OptimizerSpec.model_fields))
    return max_epochs, optimizer, problems
