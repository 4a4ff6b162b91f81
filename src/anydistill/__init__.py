"""anydistill: distill any teacher into a smaller, faster student.

Entry points: the `anydistill` command (`anydistill.cli`); from Python, `anydistill.distill(teacher,
student, data, method=...)` (docs/python-api.md); every method as a LightningModule for a user's
own Trainer through `anydistill.methods.get(name)`; recipes through `anydistill.catalog.load_recipe`
and `anydistill.runner.run_recipe`.
"""

import logging
from typing import Any

__version__ = "0.1.0"

# Lightning's start-up banner (accelerator availability, logger tips) says nothing about a run and
# would be printed each time a Trainer is built, including when a recipe is validated.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def __getattr__(name: str) -> Any:
    # Imported on first use: `anydistill --help` and `import anydistill` stay free of torch/Lightning.
    if name in ("distill", "DistillResult"):
        from anydistill import api

        return getattr(api, name)
    if name == "methods":  # the method registry: anydistill.methods.get("kd") is a LightningModule class
        from anydistill.registries import METHODS

        return METHODS
    raise AttributeError(f"module 'anydistill' has no attribute '{name}'")
