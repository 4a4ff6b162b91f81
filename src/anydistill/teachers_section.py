"""The ``teachers:`` section of a recipe: several teachers by name, each in-process (an architecture
plus ``checkpoint``), cached (``topk: K`` on an in-process one) or served (``server: URL``), mixed by
``mix:`` (`anydistill.lm.teacher_mixture`). Read and checked here; built by `build_teacher_mixture`
for validation and for the run."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anydistill.core.errors import RecipeError, first_line
from anydistill.core.teacher import Teacher

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # names rows of the run's metrics


@dataclass
class TeacherEntry:
    """One teacher of ``teachers:``: a model ``component`` (+ ``checkpoint``, ``topk``) or ``served`` settings."""

    name: str
    component: Any = None
    checkpoint: str | None = None
    topk: int | None = None
    served: dict[str, Any] | None = None

    def resolved(self) -> dict[str, Any]:
        """The section as config.yaml saves it."""
        if self.served is not None:
            return dict(self.served)
        from anydistill.registries import MODELS

        return {"name": MODELS.saved_name(self.component.name), **self.component.kwargs,
                **({"checkpoint": self.checkpoint} if self.checkpoint else {}), **({"topk": self.topk} if self.topk else {})}


def read_teachers(raw: Any, component: Any, served_settings: Any, problems: list[str]) -> dict[str, TeacherEntry]:
    """The entries of a ``teachers:`` mapping, each checked like a ``teacher:`` section (``component``
    and ``served_settings`` are the catalog's readers of those); problems are appended, one line each."""
    entries: dict[str, TeacherEntry] = {}
    if not isinstance(raw, dict) or not raw:
        problems.append("teachers: give a mapping of teacher names to teacher sections, e.g. "
                        "{shakespeare: {name: gpt2-lm, ..., checkpoint: ...}, news: {server: http://127.0.0.1:8001}}.")
        return entries
    for name, section in raw.items():
        where = f"teachers.{name}"
        if not NAME.match(str(name)):
            problems.append(f"{where}: a teacher's name names rows of the run; use letters, digits and . _ - only.")
            continue
        if not isinstance(section, dict):
            problems.append(f"{where}: expected a teacher section (name: ARCHITECTURE + checkpoint, or server: URL), got {section!r}.")
            continue
        section = dict(section)
        if "server" in section:
            settings, _ = served_settings(section, problems, where)
            if settings is not None:
                entries[name] = TeacherEntry(name, served=settings)
            continue
        checkpoint, topk = section.pop("checkpoint", None), section.pop("topk", None)
        if topk is not None and (not isinstance(topk, int) or isinstance(topk, bool) or topk < 1):
            problems.append(f"{where}.topk: the number of cached log-probabilities per position must be a positive integer. Got {topk!r}.")
        if checkpoint is not None and not Path(str(checkpoint)).is_file():
            problems.append(f"{where}.checkpoint: no such file '{checkpoint}'. Point it at a model.safetensors written by a 'teacher' run.")
        built = component(section, where)
        if built is not None:
            entries[name] = TeacherEntry(name, built, None if checkpoint is None else str(checkpoint), topk)
    return entries


def section_problems(raw: dict[str, Any], methods: dict[str, Any], able_methods: Any) -> list[str]:
    """``teachers:`` against the rest of the recipe: not with ``teacher:``, only with ``mix:``, and
    only methods that take several teachers (``methods`` label -> component; ``able_methods()`` lists
    them, asked only when a method cannot: it imports every registered method, plugins included)."""
    problems = []
    has_teachers, has_mix = raw.get("teachers") is not None, raw.get("mix") is not None
    if has_teachers and raw.get("teacher") is not None:
        problems.append("teacher, teachers: give one teacher (teacher:) or several (teachers: with mix:), not both.")
    if has_teachers and not has_mix:
        problems.append("mix: several teachers need a mix: route (each example's teacher from its domain tag), average or weighted.")
    if has_mix and not has_teachers:
        problems.append("mix: a mix needs several teachers (teachers: {name: {...}, ...}); with one teacher remove mix.")
    if not has_teachers:
        return problems
    for label, component in methods.items():
        if component.target.trains == "teacher":
            problems.append(f"methods.{label}: '{component.name}' trains one teacher; train each teacher in its own recipe and point "
                            "teachers.NAME.checkpoint at its export.")
        elif component.target.needs_teacher and not component.target.several_teachers:
            problems.append(f"methods.{label}: method '{component.name}' learns from one teacher; several teachers (teachers:) work with "
                            f"{', '.join(able_methods()) or 'no method here'}.")
    return problems


def build_teacher_mixture(entries: dict[str, TeacherEntry], mix: Any, build_model: Any, load_weights: Any, *, connect: bool) -> Any:
    """The `TeacherMixture` of the entries: in-process models built by ``build_model(component)``
    with ``load_weights(model, checkpoint, name)``, served teachers connected when ``connect``.

    Raises:
        RecipeError: a mix that does not fit the teachers, a checkpoint that does not load, a server
            that does not answer: one line each.
    """
    from anydistill.lm.served.client import ServedTeacher, ServerError
    from anydistill.lm.teacher_mixture import TeacherMixture

    teachers, problems = {}, []
    for name, entry in entries.items():
        if entry.served is not None:
            teacher = ServedTeacher(**entry.served)
            try:
                if connect:
                    teacher.connect()
            except ServerError as error:
                problems.append(f"teachers.{name}.server: {error}")
            teachers[name] = teacher
            continue
        model = build_model(entry.component)
        if entry.checkpoint:
            try:
                load_weights(model, entry.checkpoint, entry.component.name)
            except ValueError as error:
                problems.append(f"teachers.{name}: {first_line(error)}")
        spec = {k: v for k, v in entry.resolved().items() if k != "checkpoint"}  # weights are hashed anyway
        teachers[name] = Teacher(model, name=name, spec=json.dumps(spec, sort_keys=True))
    if problems:
        for teacher in teachers.values():
            getattr(teacher, "close", lambda: None)()
        raise RecipeError(problems)
    return TeacherMixture(teachers, mix.strategy, weights=mix.weights, space=mix.space,
                          topk={name: e.topk for name, e in entries.items() if e.topk is not None})


def local_teachers(teacher: Any) -> dict[str, Teacher]:
    """The in-process teachers of a mixture, by name (each gets a row in the run's metrics)."""
    return {m.name: m.teacher for m in getattr(teacher, "members", []) if isinstance(m.teacher, Teacher)}
