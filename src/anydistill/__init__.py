"""anydistill: distill any teacher into a smaller, faster student.

The public entry points are the `anydistill` command (`anydistill.cli`) and, for library use,
`anydistill.runner.run_recipe` with a recipe loaded by `anydistill.core.recipe.load_recipe`.
"""

import logging

__version__ = "0.1.0"

# Lightning's start-up banner (accelerator availability, logger tips) says nothing about a run and
# would be printed each time a Trainer is built, including when a recipe is validated.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
