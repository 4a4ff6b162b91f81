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
# (and the family's keywords of `distill`, e.g. ``tokenizer``) and returning (data-module class,
# what config.yaml records, the section's other options).
IN_MEMORY_DATA: dict[str, str] = {
    "lm": "anydistill.data.in_memory_text:bind_lm_data",
    "diffusion": "anydistill.data.in_memory_generation:bind_generation_data",
}

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

    def __init__(self, trains_teacher: bool = False) -> None:
        self.entries: dict[str, InMemory] = {}
        self.trains_teacher = trains_teacher  # the method trains the teacher role: copy it too

    def model(self, value: Any, role: str) -> dict[str, Any] | None:
        """The ``student`` / ``teacher`` section for ``value``: an ``nn.Module`` (a student is
        copied for each method, so every method starts from the same weights; a teacher is used
        as is, frozen), a registered model name, a ``{name: ..., options}`` mapping, a folder whose
        config.json names a causal LM (``{name: hf-causal-lm, path: folder}``: transformers'
        ``save_pretrained``, a run's LM export), or (teacher) a ``model.safetensors`` written by a
        run, or its folder, with the ``model.json`` beside it."""
        if value is None or isinstance(value, dict):  # paths as strings: the recipe's types are strict
            return {k: str(v) if isinstance(v, os.PathLike) else v for k, v in value.items()} if value is not None else None
        if isinstance(value, nn.Module):
            module = value

            def build(input_shape: Any = None, num_classes: Any = None) -> nn.Module:
                # A student trains as a builder's would: in train mode (from_pretrained returns eval mode).
                if role == "student" or self.trains_teacher:  # trained: a copy, never the caller's module
                    return copy.deepcopy(module).train()
                return module

            record = {"class": f"{type(module).__module__}.{type(module).__qualname__}",
                      "parameters": sum(p.numel() for p in module.parameters()),
                      "fingerprint": state_fingerprint(module), "note": IN_MEMORY_NOTE}
            return self._register(role, MODELS, build, record)
        if isinstance(value, str | os.PathLike):
            path = Path(value)
            if str(value) not in MODELS and causal_lm_folder(path):  # save_pretrained wrote it (a run's LM export too)
                return {"name": "hf-causal-lm", "path": str(value)}
            weights = path / "model.safetensors" if path.is_dir() else path
            if weights.suffix == ".safetensors" and role.startswith("teacher"):
                spec = weights.with_name("model.json")
                if not weights.is_file() or not spec.is_file():
                    raise ValueError(f"teacher: '{value}' needs model.safetensors and the model.json beside it (what a run's "
                                     "checkpoints/<label>/ folder holds); give that folder, a model name or an nn.Module.")
                return {**json.loads(spec.read_text()), "checkpoint": str(weights)}
            return {"name": str(value)}
        raise ValueError(f"{role}: got {type(value).__name__}; give an nn.Module, a model name (`anydistill methods` lists the "
                         f"recipes' names), a {{'name': ..., options}} mapping" + (", or a run's model.safetensors" if role == "teacher" else "") + ".")

    def data(self, value: Any, family: str | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` section: a data-module name or mapping, or what a caller holds in memory,
        bound by the family's binder (`IN_MEMORY_DATA`; classifiers and dataset distillation:
        `arrays_from`). ``options`` are the family's keywords of the call (``tokenizer``): given to
        the binder, or added to a name's or mapping's section when they are paths."""
        options = {k: v for k, v in (options or {}).items() if v is not None}
        if isinstance(value, str) or (isinstance(value, dict) and "name" in value):
            section = {"name": value} if isinstance(value, str) else {k: str(v) if isinstance(v, os.PathLike) else v for k, v in value.items()}
            for key, option in options.items():
                if not isinstance(option, str | os.PathLike):
                    raise ValueError(f"{key}: a {type(option).__name__} object goes with data held in memory; with data "
                                     f"'{section['name']}' give the folder it was saved to ({key}.save_pretrained(folder)).")
                section.setdefault(key, str(option))
            return section
        if family in IN_MEMORY_DATA:
            target, record, section_options = import_object(IN_MEMORY_DATA[family])(value, **options)
            return {**self._register("data", DATA, target, {**record, "note": IN_MEMORY_NOTE}), **section_options}
        if options:
            raise ValueError(f"{', '.join(options)}: only language-model methods read a tokenizer; drop it.")
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
            owner, key = (out.setdefault("teachers", {}), role.split(".", 1)[1]) if role.startswith("teachers.") else (out, role)
            section = dict(owner.get(key) or {})
            section.pop("name", None)
            # An option left unset (an in-memory text's tokenizer folder) does not hide what the record says of it.
            section = {k: v for k, v in section.items() if not (v is None and k in entry.record)}
            owner[key] = {"name": "in-memory", **entry.record, **section}
        return out

    @staticmethod
    def folder_of(section: dict[str, Any] | None) -> str | None:
        """The model folder of a ``{name: hf-causal-lm, path: ...}`` section (what the recipes
        name as ``data.tokenizer``), or None."""
        return section.get("path") if section and section.get("name") == "hf-causal-lm" else None

    @property
    def replayable(self) -> bool:
        """Whether every object is a name or a path, so `anydistill run config.yaml` replays the run."""
        return not self.entries


def causal_lm_folder(path: Path) -> bool:
    """Whether ``path`` is a folder whose config.json names a causal language model (transformers'
    ``save_pretrained``), which `hf-causal-lm` loads: reads config.json only."""
    if not (path / "config.json").is_file():
        return False
    from anydistill.models.hf_causal_lm import folder_problem

    try:
        return folder_problem(str(path)) is None
    except ImportError:  # transformers is not installed: not a folder anydistill can load as an LM
        return False
