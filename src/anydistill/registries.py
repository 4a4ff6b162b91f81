"""The four registries, filled from the families' tables and from installed plugins.

Built-ins are declared as import paths in one table per family (``classifier/catalog.py``,
``lm/catalog.py``...; ``data/catalog.py``, ``models/catalog.py``), so every name is registered
whatever was imported before. Installed packages add names through the entry-point groups
``anydistill.methods``, ``anydistill.data`` and ``anydistill.models``; user code adds its own
with ``METHODS.register("name")`` or names an import path in a recipe.
"""

from __future__ import annotations

from anydistill.classifier import catalog as classifier
from anydistill.core.registry import Registry
from anydistill.data.catalog import DATA as _DATA
from anydistill.dataset import catalog as dataset
from anydistill.diffusion import catalog as diffusion
from anydistill.lm import catalog as lm
from anydistill.models.catalog import MODELS as _MODELS

FAMILIES = {"classifier": classifier, "lm": lm, "diffusion": diffusion, "dataset": dataset}

METHODS = Registry("method", {name: path for family in FAMILIES.values() for name, path in family.METHODS.items()},
                   entry_points="anydistill.methods")
DATA = Registry("data module", _DATA, entry_points="anydistill.data")
MODELS = Registry("model", _MODELS, entry_points="anydistill.models")
# One evaluator per family: every model of a recipe is scored by the same one.
EVALUATORS = Registry("evaluator", {name: family.EVALUATOR for name, family in FAMILIES.items()})


def methods_with(flag: str) -> list[str]:
    """The registered methods whose class attribute ``flag`` is true (for messages; a plugin that
    fails to import is left out here: its own problem is reported where it is used)."""
    names = []
    for name in METHODS.names():
        try:
            target = METHODS.get(name)
        except Exception:  # noqa: BLE001 - any import failure of a plugin
            continue
        if getattr(target, flag, False):
            names.append(name)
    return names
