"""Every shipped recipe validates (found recursively: a recipe nobody loads rots) and begins with a
comment giving the command that runs it."""

from __future__ import annotations

import pytest

from anydistill.catalog import load_recipe, shipped_recipes


def test_recipes_are_found_recursively() -> None:
    names = shipped_recipes()
    assert "mnist/demo" in names and "digits/all-methods" in names


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_validates(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.methods
    lines = shipped_recipes()[name].read_text().splitlines()
    assert lines[0].startswith("# ") and any(line.startswith("# Run: anydistill ") for line in lines[:3])
