"""anydistill: distill any teacher into a smaller, faster student.

The public entry points are the `anydistill` command (`anydistill.cli`) and, for library use,
`anydistill.runner.run_recipe` with a recipe loaded by `anydistill.core.recipe.load_recipe`.
"""

__version__ = "0.1.0"
