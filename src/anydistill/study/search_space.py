"""The search space of a study: the method's ``search_space`` (ranges from its paper), the shared
optimizer settings and the user's ``--space`` arguments, each checked against the method's typed
signature before a trial runs."""

from __future__ import annotations

import json
import typing
from typing import Any

from anydistill.catalog import METHOD_INJECTED
from anydistill.core.errors import AnydistillError
from anydistill.core.recipe import OptimizerSpec, _pydantic_problems, parameters_of
from anydistill.core.space import OPTIMIZER_SPACE, Space, parse_space


class TuneError(AnydistillError):
    """A problem with the tune command's arguments or its study (one line each)."""




def _base_type(annotation: Any) -> Any:
    """``int`` for ``Annotated[int, ...]``, the annotation itself otherwise."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def settable_parameters(method_cls: type) -> dict[str, tuple[Any, Any]]:
    """Search-space key -> (annotation, default) of everything a study may tune for a method: its
    constructor parameters and ``optimizer.<field>``."""
    fields = dict(parameters_of(method_cls, METHOD_INJECTED))
    for name, info in OptimizerSpec.model_fields.items():
        if name != "step_milestones":
            fields[f"optimizer.{name}"] = (info.rebuild_annotation(), info.default)
    return fields


def check_space(method_cls: type, label: str, space: dict[str, Space]) -> list[str]:
    """Problems with ``space``: unknown keys, and bounds the typed signature refuses (a range
    whose both ends are valid holds only valid values: every constraint here is an interval)."""
    import pydantic

    known = settable_parameters(method_cls)
    problems = []
    for key, dimension in space.items():
        if key not in known:
            problems.append(unknown_key(key, label, known))
            continue
        where = f"search space {key}={dimension.describe()}"
        if key.startswith("optimizer."):
            for value in dimension.bounds():
                try:
                    OptimizerSpec.model_validate({key.split(".", 1)[1]: value})
                except pydantic.ValidationError as error:
                    problems += _pydantic_problems(error.errors(), "the optimizer", where, list(OptimizerSpec.model_fields))
            continue
        from pydantic import ConfigDict

        model = pydantic.create_model(  # type: ignore[call-overload]
            f"Space_{label}", __config__=ConfigDict(strict=True, arbitrary_types_allowed=True), **{key: known[key]}
        )
        for value in dimension.bounds():
            try:
                model.model_validate({key: value})
            except pydantic.ValidationError as error:
                problems += _pydantic_problems(error.errors(), f"method '{label}'", where, list(known))
    return list(dict.fromkeys(problems))


def unknown_key(key: str, label: str, known: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"--space {key}: method '{label}' has no parameter '{key}' to search.{hint} Known parameters: {', '.join(known)}."


def build_space(method_cls: type, label: str, arguments: list[str], fixed: set[str]) -> dict[str, Space]:
    """The study's space: the method's ``search_space`` and `OPTIMIZER_SPACE`, then ``arguments``
    (``KEY=LOW:HIGH[:log]``, ``KEY=a,b,c``, ``KEY=off``), minus the keys ``fixed`` by ``--set``.

    Raises:
        TuneError: every problem, one line each.
    """
    space: dict[str, Space] = {**OPTIMIZER_SPACE, **getattr(method_cls, "search_space", {})}
    known = settable_parameters(method_cls)
    problems: list[str] = []
    for argument in arguments:
        key, sep, text = argument.partition("=")
        if not sep or not key or not text:
            problems.append(f"--space {argument}: expected KEY=LOW:HIGH[:log], KEY=a,b,c or KEY=off, e.g. --space temperature=1:8:log.")
            continue
        if key not in known:
            problems.append(unknown_key(key, label, known))
            continue
        if text == "off":
            space.pop(key, None)
            continue
        try:
            space[key] = parse_space(text, integer=_base_type(known[key][0]) is int)
        except ValueError as error:
            problems.append(f"--space {argument}: {error}")
    problems += [p for p in check_space(method_cls, label, space) if p not in problems]
    if problems:
        raise TuneError("\n".join(problems))
    return {key: dimension for key, dimension in space.items() if key not in fixed}


def trial_overrides(label: str, params: dict[str, Any]) -> list[str]:
    """``--set`` assignments putting search-space values into the recipe: method parameters under
    ``methods.<label>``, optimizer settings under the method's own ``optimizer`` (laid over the
    recipe's, so the other methods of a recipe keep theirs)."""
    return [f"methods.{label}.{key}={json.dumps(value)}" for key, value in params.items()]


def fixed_by_set(overrides: list[str], label: str) -> set[str]:
    """Search-space keys that ``--set`` fixes: ``methods.<label>.<key>``, ``methods.<label>.optimizer.<key>``
    and ``optimizer.<key>`` (the recipe-wide optimizer) become ``<key>`` / ``optimizer.<key>``."""
    fixed = set()
    for assignment in overrides:
        key = assignment.partition("=")[0]
        if key.startswith(f"methods.{label}."):
            fixed.add(key.removeprefix(f"methods.{label}."))
        elif key.startswith("optimizer."):
            fixed.add(key)
    return fixed
