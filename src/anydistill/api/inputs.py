"""The objects a Python caller passes, turned into the recipe sections the CLI would read.

Names, ``{name: ..., options}`` mappings and checkpoint paths pass through unchanged. Modules and
data held in memory are registered under temporary names for the length of a call, so the recipe
loader checks them with the same code and messages as a recipe file; the run's config.yaml then
records them by class path, parameter count and fingerprint (`Inputs.describe`).
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from anydistill.core.registry import Registry, import_object
from anydistill.core.teacher import state_fingerprint
from anydistill.data.in_memory import InMemoryData, arrays_from
from anydistill.registries import DATA, MODELS

# Families whose in-memory data is not (x, y) arrays: "module:function" taking the caller's value
# and returning (data-module class, what config.yaml records, the section's other options).
IN_MEMORY_DATA: dict[str, str] = {}

IN_MEMORY_NOTE = ("passed in memory from Python: `anydistill run` cannot rebuild it from this file; "
                  "pass a registered name or a checkpoint path instead to make the config replayable")


@dataclass
class InMemory:
    """One object registered for a call: where (``registry``, ``name``) and what config.yaml says of it."""

    registry: Registry
    name: str
    target: Any
    record: dict[str, Any]


class Inputs:
    """The recipe sections of one Python call and the in-memory objects behind them, by role."""

    def __init__(self) -> None:
        self.entries: dict[str, InMemory] = {}

    def model(self, value: Any, role: str) -> dict[str, Any] | None:
        """The ``student`` / ``teacher`` section for ``value``: an ``nn.Module`` (a student is
        copied for each method, so every method starts from the same weights; a teacher is used
        as is, frozen), a registered model name, a ``{name: ..., options}`` mapping, or (teacher) a
        ``model.safetensors`` written by a run, or its folder, with the ``model.json`` beside it."""
        if value is None or isinstance(value, dict):
            return dict(value) if value is not None else None
        if isinstance(value, nn.Module):
            module = value

            def build(input_shape: Any = None, num_classes: Any = None) -> nn.Module:
                return copy.deepcopy(module) if role == "student" else module

            record = {"class": f"{type(module).__module__}.{type(module).__qualname__}",
                      "parameters": sum(p.numel() for p in module.parameters()),
                      "fingerprint": state_fingerprint(module), "note": IN_MEMORY_NOTE}
            return self._register(role, MODELS, build, record)
        if isinstance(value, str | os.PathLike):
            path = Path(value)
            weights = path / "model.safetensors" if path.is_dir() else path
            if weights.suffix == ".safetensors" and role == "teacher":
                spec = weights.with_name("model.json")
                if not weights.is_file() or not spec.is_file():
                    raise ValueError(f"teacher: '{value}' needs model.safetensors and the model.json beside it (what a run's "
                                     "checkpoints/<label>/ folder holds); give that folder, a model name or an nn.Module.")
                return {**json.loads(spec.read_text()), "checkpoint": str(weights)}
            return {"name": str(value)}
        raise ValueError(f"{role}: got {type(value).__name__}; give an nn.Module, a model name (`anydistill methods` lists the "
                         f"recipes' names), a {{'name': ..., options}} mapping" + (", or a run's model.safetensors" if role == "teacher" else "") + ".")

    def data(self, value: Any, family: str | None = None) -> dict[str, Any]:
        """The ``data`` section: a data-module name or mapping, or what a caller holds in memory,
        bound by the family's binder (`IN_MEMORY_DATA`; classifiers and dataset distillation:
        `arrays_from`)."""
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" in value:
            return dict(value)
        if family in IN_MEMORY_DATA:
            target, record, options = import_object(IN_MEMORY_DATA[family])(value)
            return {**self._register("data", DATA, target, {**record, "note": IN_MEMORY_NOTE}), **options}
        arrays = arrays_from(value)
        splits = ", ".join(f"{name} {len(x)} rows" for name, (x, _) in arrays.items())
        target = InMemoryData.bind(arrays, f"in-memory {type(value).__name__} ({splits})")
        record = {"class": type(value).__module__ + "." + type(value).__qualname__, "rows": splits,
                  "fingerprint": target.fingerprint_of(), "note": IN_MEMORY_NOTE}
        # The caller's tensors are what its models expect: not standardised unless asked.
        return {**self._register("data", DATA, target, record), "standardize": False}

    def _register(self, role: str, registry: Registry, target: Any, record: dict[str, Any]) -> dict[str, Any]:
        name = f"in-memory {role}"
        self.entries[role] = InMemory(registry, name, target, record)
        return {"name": name}

    @contextmanager
    def registered(self) -> Iterator[None]:
        """The in-memory objects registered under their temporary names, removed on exit."""
        added = []
        try:
            for entry in self.entries.values():
                entry.registry.register(entry.name)(entry.target)
                added.append(entry)
            yield
        finally:
            for entry in added:
                entry.registry.unregister(entry.name)

    def describe(self, resolved: dict[str, Any]) -> dict[str, Any]:
        """``resolved`` (the config.yaml mapping) with each in-memory object's section replaced by
        its record, the options it was given kept."""
        out = copy.deepcopy(resolved)
        for role, entry in self.entries.items():
            section = dict(out.get(role) or {})
            section.pop("name", None)
            out[role] = {"name": "in-memory", **entry.record, **section}
        return out

    @property
    def replayable(self) -> bool:
        """Whether every object is a name or a path, so `anydistill run config.yaml` replays the run."""
        return not self.entries
