"""Registries keyed by name: lazy built-ins, user entries, the dotted import path escape hatch."""

import pytest
from torch import nn

from anydistill.catalog import DATA, METHODS, MODELS, load_recipe
from anydistill.core.registry import Registry, import_object
from anydistill.models import classifiers as models


def test_builtin_entries_resolve_lazily():
    registry = Registry("model", {"mlp": "anydistill.models.classifiers:mlp"})
    assert "mlp" in registry and registry._objects == {}
    assert registry.get("mlp") is models.mlp
    assert registry.names() == ["mlp"]


def test_catalog_registries_are_complete_without_imports():
    assert {"scratch", "kd", "fitnets", "attention-transfer", "dkd", "teacher"} <= set(METHODS.names())
    assert {"digits", "mnist"} <= set(DATA.names())
    assert {"mlp", "small-cnn", "ccexam-mnistnet"} <= set(MODELS.names())
    assert METHODS.names() == sorted(METHODS.names())


def test_unknown_name_lists_names_and_suggests_closest():
    with pytest.raises(LookupError) as info:
        METHODS.get("kdd")
    message = str(info.value)
    assert message.startswith("Unknown method 'kdd'; did you mean 'kd'? Registered methods: ")
    assert ", ".join(METHODS.names()) in message
    assert "import path" in message
    assert "\n" not in message


def test_unknown_name_without_close_match_has_no_suggestion():
    message = MODELS.unknown_message("zzzzzzzz")
    assert message.startswith("Unknown model 'zzzzzzzz'. Registered models: ")
    assert "did you mean" not in message


@pytest.mark.parametrize("path", ["anydistill.models.classifiers:mlp", "anydistill.models.classifiers.mlp"])
def test_dotted_import_path_escape_hatch(path):
    assert MODELS.get(path) is models.mlp
    assert import_object(path) is models.mlp


def test_bad_import_paths_say_what_is_missing():
    with pytest.raises(LookupError, match="cannot import module 'anydistill.no_such_module'"):
        MODELS.get("anydistill.no_such_module:thing")
    with pytest.raises(LookupError, match="module 'anydistill.models.classifiers' has no attribute 'nope'"):
        MODELS.get("anydistill.models.classifiers:nope")


def test_register_adds_a_user_entry_and_refuses_duplicates():
    registry = Registry("model", {"mlp": "anydistill.models.classifiers:mlp"})

    @registry.register("tiny")
    def tiny(input_shape, num_classes):
        return nn.Linear(1, num_classes)

    assert registry.get("tiny") is tiny
    assert registry.names() == ["mlp", "tiny"]
    with pytest.raises(ValueError, match="A model named 'tiny' is already registered."):
        registry.register("tiny")(tiny)
    # A built-in name is taken too, even before it was imported.
    with pytest.raises(ValueError, match="A model named 'mlp' is already registered."):
        registry.register("mlp")(tiny)
    assert registry.get("mlp") is models.mlp


def test_registered_user_model_is_usable_in_a_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(MODELS, "_objects", dict(MODELS._objects))  # undone after the test

    @MODELS.register("test-linear")
    def linear(input_shape: tuple[int, ...], num_classes: int, *, bias: bool = True) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes, bias=bias))

    path = tmp_path / "r.yaml"
    path.write_text("name: t\ndata: {name: digits}\nstudent: {name: test-linear, bias: false}\nmethods: {scratch: {}}\n")
    recipe = load_recipe(str(path))
    assert recipe.student.target is linear
    assert recipe.resolved["student"] == {"name": "test-linear", "bias": False}


def test_import_path_in_a_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\ndata: {name: digits}\nstudent: {name: 'anydistill.models.classifiers:mlp', hidden: [8]}\nmethods: {scratch: {}}\n")
    recipe = load_recipe(str(path))
    assert recipe.student.target is models.mlp
    assert recipe.resolved["student"] == {"name": "anydistill.models.classifiers:mlp", "hidden": [8]}
