"""Every shipped recipe validates (found recursively: a recipe nobody loads rots) and begins with a
comment giving the command that runs it."""

from __future__ import annotations

import pytest

from anydistill.catalog import load_recipe, shipped_recipes


def test_recipes_are_found_recursively() -> None:
    names = shipped_recipes()
    assert "mnist/demo" in names and "digits/all-methods" in names


def needs_user_files(name: str) -> bool:
    """Examples that point at the user's own files say so in their header (`# Needs your files: ...`);
    each is validated with stand-in files by its family's end-to-end test instead."""
    return any(line.startswith("# Needs your files:") for line in shipped_recipes()[name].read_text().splitlines()[:5])


def needs_server(name: str) -> bool:
    """Examples whose teacher is served (`# Needs a teacher server: ...`) are validated against a
    loopback server by tests/e2e/test_served_teacher_run.py."""
    return any(line.startswith("# Needs a teacher server:") for line in shipped_recipes()[name].read_text().splitlines()[:5])


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_validates(name: str) -> None:
    if needs_user_files(name):
        pytest.skip("points at the user's own files; validated with stand-ins by its family's end-to-end test")
    if needs_server(name):
        pytest.skip("its teacher is served; validated against a loopback server by its end-to-end test")
    recipe = load_recipe(name)
    assert recipe.methods
    lines = shipped_recipes()[name].read_text().splitlines()
    assert lines[0].startswith("# ") and any(line.startswith("# Run: anydistill ") for line in lines[:3])
