"""Recipe loading: YAML reading, `--set` overrides, top-level validation, component signatures,
and the cross-section checks of `anydistill.catalog.load_recipe` (all problems reported at once)."""

from pathlib import Path

import pytest

from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError
from anydistill.core.recipe import (
    Fraction,
    PositiveFloat,
    RecipeFile,
    TrainerSpec,
    parse_recipe_file,
    read_yaml,
    validate_kwargs,
)

BASE = """\
name: tiny
data: {name: digits}
student: {name: mlp, hidden: [16]}
teacher: {name: small-cnn}
methods:
  scratch: {}
  kd: {temperature: 2.0}
"""


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(path: Path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path), list(overrides))
    problems = info.value.problems
    assert str(info.value) == "\n".join(problems)
    for line in problems:  # one line per problem, prefixed by the file, never a traceback
        assert "\n" not in line
        assert "Traceback" not in line
        assert line.startswith(f"{path}: ")
    return problems


def _minimal(**sections) -> dict:
    raw = {"name": "tiny", "data": {"name": "digits"}, "student": {"name": "mlp"}, "methods": {"scratch": {}}}
    raw.update(sections)
    return raw


# ---------------------------------------------------------------------------------------------
# read_yaml


def test_read_yaml_reads_exponent_notation_as_float(tmp_path):
    raw = read_yaml(_write(tmp_path, "lr: 1e-3\nbig: 1E3\nplain: 5\nneg: -2.5e+1\ndot: .5\nword: e3\n"))
    assert raw == {"lr": 0.001, "big": 1000.0, "plain": 5, "neg": -25.0, "dot": 0.5, "word": "e3"}
    assert type(raw["lr"]) is float and type(raw["big"]) is float
    assert type(raw["plain"]) is int  # integers stay integers (strict int fields depend on it)


def test_read_yaml_syntax_error_is_one_line_with_position(tmp_path):
    path = _write(tmp_path, "name: tiny\ndata: {name: digits\nstudent: x\n")
    with pytest.raises(RecipeError) as info:
        read_yaml(path)
    assert len(info.value.problems) == 1
    line = info.value.problems[0]
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"{path}: YAML syntax error at line 3, column 8")


def test_read_yaml_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(RecipeError) as info:
        read_yaml(path)
    assert info.value.problems == [
        f"{path}: no such recipe file. Check the path, or run `anydistill recipes` to list shipped ones."
    ]


def test_read_yaml_directory_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="cannot read it as a text file"):
        read_yaml(tmp_path)


# ---------------------------------------------------------------------------------------------
# parse_recipe_file and --set overrides


def _parse_ok(raw, overrides=()):
    parsed, problems = parse_recipe_file(raw, list(overrides))
    assert problems == []
    assert isinstance(parsed, RecipeFile)
    return parsed


def _parse_problems(raw, overrides=()):
    parsed, problems = parse_recipe_file(raw, list(overrides))
    assert parsed is None and problems
    for line in problems:
        assert "\n" not in line and "Traceback" not in line
    return problems


def test_parse_fills_section_defaults():
    parsed = _parse_ok(_minimal())
    assert parsed.teacher is None
    assert parsed.trainer == TrainerSpec()
    assert parsed.optimizer.name == "adam" and parsed.optimizer.lr == 1e-3
    assert parsed.cache.enabled is False


def test_parse_refuses_a_non_mapping():
    problems = _parse_problems(["not", "a", "mapping"])
    assert len(problems) == 1 and problems[0].startswith("a recipe must be a YAML mapping")


def test_overrides_set_nested_values_parsed_as_yaml():
    raw = _minimal(methods={"kd": {"temperature": 4.0}})
    parsed = _parse_ok(
        raw,
        ["trainer.max_epochs=3", "optimizer.lr=1e-2", "methods.kd.temperature=2.5", "student.hidden=[8, 4]", "cache.enabled=true"],
    )
    assert parsed.trainer.max_epochs == 3
    assert parsed.optimizer.lr == 0.01
    assert parsed.methods["kd"] == {"temperature": 2.5}
    assert parsed.student == {"name": "mlp", "hidden": [8, 4]}
    assert parsed.cache.enabled is True
    assert raw["trainer"] == {"max_epochs": 3}  # applied to the raw mapping in place


def test_override_creates_missing_sections_and_fills_null_ones():
    parsed = _parse_ok(_minimal(methods={"scratch": None}), ["teacher.name=small-cnn", "methods.scratch.x=1"])
    assert parsed.teacher == {"name": "small-cnn"}
    assert parsed.methods["scratch"] == {"x": 1}


def test_override_with_empty_value_sets_null():
    assert _parse_ok(_minimal(teacher={"name": "small-cnn"}), ["teacher="]).teacher is None


def test_bad_overrides_are_all_reported():
    problems = _parse_problems(_minimal(), ["novalue", "name.x=1", "trainer.max_epochs=zero"])
    assert problems == [
        "--set novalue: expected key=value, e.g. --set methods.kd.temperature=2.0.",
        "--set name.x=1: 'name' is a value, not a section, so 'name.x' cannot be set.",
        "trainer.max_epochs: the 'max_epochs' parameter of the 'trainer' section must be a valid integer. Got 'zero'.",
    ]


def test_top_level_problems_are_reported_together():
    raw = _minimal(bogus=1, trainer={"max_epochs": "three", "precison": "32-true"}, optimizer={"lr": -1.0})
    problems = _parse_problems(raw)
    text = "\n".join(problems)
    assert len(problems) == 4
    assert "bogus: unknown key 'bogus' for a recipe" in text
    assert "trainer.max_epochs: the 'max_epochs' parameter of the 'trainer' section must be a valid integer. Got 'three'." in text
    assert "trainer.precison: unknown key 'precison' for the 'trainer' section; did you mean 'precision'?" in text
    assert "optimizer.lr: the 'lr' parameter of the 'optimizer' section must be greater than 0. Got -1.0." in text


def test_missing_required_sections_are_named():
    text = "\n".join(_parse_problems({"name": "tiny"}))
    for key in ("data", "methods"):
        assert f"{key}: the '{key}' parameter of a recipe is required." in text


def test_union_field_problem_is_one_line():
    problems = _parse_problems(_minimal(trainer={"limit_train_batches": "x"}))
    assert len(problems) == 1
    assert "'limit_train_batches' parameter" in problems[0]


# ---------------------------------------------------------------------------------------------
# validate_kwargs


def _component(student, teacher=None, *, temperature: PositiveFloat = 4.0, alpha: Fraction = 0.9, steps: int, tags: list[str] = []):  # noqa: B006
    return None


_INJECTED = frozenset({"student", "teacher"})


def test_validate_kwargs_fills_defaults_and_accepts_int_for_float():
    values, problems = validate_kwargs(_component, {"steps": 3, "temperature": 2}, owner="method 'x'", where="methods.x", injected=_INJECTED)
    assert problems == []
    assert values == {"temperature": 2.0, "alpha": 0.9, "steps": 3, "tags": []}


def test_validate_kwargs_reports_every_problem_in_the_convention_shape():
    values, problems = validate_kwargs(
        _component,
        {"temperature": -1.0, "alpah": 0.5, "steps": "3", "student": 1},
        owner="method 'x'",
        where="methods.x",
        injected=_INJECTED,
    )
    assert values == {}
    assert len(problems) == 4
    assert set(problems) >= set(
        [
            "methods.x.temperature: the 'temperature' parameter of method 'x' must be greater than 0. Got -1.0.",
            "methods.x.alpah: unknown key 'alpah' for method 'x'; did you mean 'alpha'? Known keys: temperature, alpha, steps, tags.",
            "methods.x.steps: the 'steps' parameter of method 'x' must be a valid integer. Got '3'.",
        ]
    )
    # Injected parameters (student, teacher) are not settable from a recipe.
    assert any(p.startswith("methods.x.student: unknown key 'student' for method 'x'") for p in problems)


def test_validate_kwargs_missing_required_and_strict_bool():
    _, problems = validate_kwargs(_component, {"alpha": True}, owner="method 'x'", where="methods.x", injected=_INJECTED)
    assert "methods.x.steps: the 'steps' parameter of method 'x' is required." in problems
    assert any(p.startswith("methods.x.alpha: ") and p.endswith("Got True.") for p in problems)


def test_validate_kwargs_on_a_class_uses_its_init():
    from anydistill.classifier.methods.kd import KD

    values, problems = validate_kwargs(KD, {}, owner="method 'kd'", where="methods.kd", injected=frozenset({"student", "teacher", "optimizer"}))
    assert problems == [] and values == {"temperature": 4.0, "alpha": 0.9}


# ---------------------------------------------------------------------------------------------
# load_recipe


def test_valid_recipe_loads_with_defaults_resolved(tmp_path):
    recipe = load_recipe(str(_write(tmp_path, BASE + "optimizer: {lr: 1e-3, name: sgd}\n")))
    assert recipe.name == "tiny" and recipe.seed == 0
    assert recipe.teacher is not None and recipe.teacher_checkpoint is None
    assert set(recipe.methods) == {"scratch", "kd"}
    assert recipe.optimizer.lr == 0.001 and isinstance(recipe.optimizer.lr, float)
    resolved = recipe.resolved
    assert resolved["data"] == {
        "name": "digits", "batch_size": 128, "eval_batch_size": 1024, "shuffle": True, "augment": False, "train_limit": None, "seed": 0,
        "labelled_count": None, "labelled_seed": 0,
    }
    assert resolved["student"] == {"name": "mlp", "hidden": [16]}
    assert resolved["teacher"] == {"name": "small-cnn", "channels": [8, 16], "hidden": 64}
    assert resolved["methods"] == {"scratch": {"name": "scratch"}, "kd": {"name": "kd", "temperature": 2.0, "alpha": 0.9}}
    assert resolved["trainer"]["max_epochs"] == 5 and resolved["trainer"]["accelerator"] == "cpu"
    assert resolved["optimizer"]["lr"] == 0.001 and resolved["optimizer"]["name"] == "sgd"
    assert resolved["cache"] == {"enabled": False, "dir": ".anydistill-cache", "features": []}


def test_load_recipe_applies_overrides(tmp_path):
    recipe = load_recipe(str(_write(tmp_path, BASE)), ["methods.kd.temperature=1e0", "trainer.max_epochs=2", "methods.kd2={name: kd}"])
    assert recipe.methods["kd"].kwargs == {"temperature": 1.0, "alpha": 0.9}
    assert recipe.methods["kd2"].kwargs == {"temperature": 4.0, "alpha": 0.9}
    assert recipe.trainer.max_epochs == 2


ALL_WRONG = """\
name: tiny
colour: blue
data: {name: digits}
student: {name: mlp, hidden: [16]}
teacher: {name: small-cnn}
trainer: {max_epochs: three}
methods:
  scratch: {}
  kd: {temperature: -1.0}
  kdd: {}
  dkd: {alhpa: 1.0}
"""

ALL_WRONG_LINES = [
    "colour: unknown key 'colour' for a recipe",
    "trainer.max_epochs: the 'max_epochs' parameter of the 'trainer' section must be a valid integer. Got 'three'.",
    "methods.kd.temperature: the 'temperature' parameter of method 'kd' must be greater than 0. Got -1.0.",
    "methods.kdd.name: Unknown method 'kdd'; did you mean 'kd'?",
    "methods.dkd.alhpa: unknown key 'alhpa' for method 'dkd'; did you mean 'alpha'?",
]


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(tmp_path, ALL_WRONG)
    text = "\n".join(_problems(path))
    for line in ALL_WRONG_LINES:
        assert f"{path}: {line}" in text


def test_component_problems_are_reported_at_once(tmp_path):
    # The same recipe with its top-level problems removed: every method problem comes in one error.
    text = ALL_WRONG.replace("colour: blue\n", "").replace("trainer: {max_epochs: three}\n", "")
    path = _write(tmp_path, text)
    problems = _problems(path)
    assert len(problems) == 3
    joined = "\n".join(problems)
    for line in ALL_WRONG_LINES[2:]:
        assert f"{path}: {line}" in joined


def test_load_recipe_yaml_syntax_error(tmp_path):
    path = _write(tmp_path, BASE + "trainer: [unclosed\n")
    problems = _problems(path)
    assert len(problems) == 1
    assert "YAML syntax error at line" in problems[0] and ", column " in problems[0]


def test_load_recipe_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    problems = _problems(path)
    assert len(problems) == 1 and "no such recipe file" in problems[0]


def test_kd_without_teacher_is_refused(tmp_path):
    path = _write(tmp_path, BASE.replace("teacher: {name: small-cnn}\n", ""))
    assert _problems(path) == [f"{path}: methods.kd: method 'kd' distills from a teacher; add a `teacher:` section."]


def test_scratch_alone_needs_no_teacher(tmp_path):
    recipe = load_recipe(str(_write(tmp_path, BASE.replace("teacher: {name: small-cnn}\n", "").replace("  kd: {temperature: 2.0}\n", ""))))
    assert recipe.teacher is None and recipe.resolved["teacher"] is None


def test_cache_with_augmentation_is_refused(tmp_path):
    path = _write(tmp_path, BASE.replace("{name: digits}", "{name: digits, augment: true}") + "cache: {enabled: true}\n")
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: cache.enabled: a teacher signal cache is invalid when the inputs change every epoch")
    assert "Set cache.enabled: false" in problems[0] and "data.augment: false" in problems[0]
    # Either one alone is fine.
    load_recipe(str(path), ["data.augment=false"])
    load_recipe(str(path), ["cache.enabled=false"])


def test_fitnets_hint_layer_must_exist_in_the_teacher(tmp_path):
    path = _write(tmp_path, BASE + "  fitnets: {hint_layer: feature.3, guided_layer: '1'}\n")
    problems = _problems(path)
    assert len(problems) == 1
    line = problems[0]
    assert line.startswith(f"{path}: methods.fitnets: teacher layer: SmallCNN has no module 'feature.3'. Did you mean ")
    assert "'features.3'" in line
    # A pair of flat features loads (a conv hint cannot be regressed from a flat MLP layer).
    load_recipe(str(path), ["methods.fitnets.hint_layer=classifier.2", "methods.fitnets.guided_layer='2'"])  # flat -> flat: a linear regressor


def test_fitnets_guided_layer_must_exist_in_the_student(tmp_path):
    path = _write(tmp_path, BASE + "  fitnets: {hint_layer: features.3, guided_layer: '7'}\n")
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: methods.fitnets: student layer: Sequential has no module '7'.")


def test_unknown_component_names_suggest_close_ones(tmp_path):
    path = _write(tmp_path, BASE.replace("{name: digits}", "{name: digit}").replace("name: small-cnn", "name: smal-cnn"))
    joined = "\n".join(_problems(path))
    assert "data.name: Unknown data module 'digit'; did you mean 'digits'?" in joined
    assert "teacher.name: Unknown model 'smal-cnn'; did you mean 'small-cnn'?" in joined


def test_teacher_incompatible_with_data_is_refused(tmp_path):
    path = _write(tmp_path, BASE.replace("name: small-cnn", "name: ccexam-mnistnet"))
    problems = _problems(path)
    assert len(problems) == 1 and "ccexam-mnistnet takes 1x28x28 inputs" in problems[0]


def test_missing_teacher_checkpoint_is_refused(tmp_path):
    path = _write(tmp_path, BASE.replace("{name: small-cnn}", "{name: small-cnn, checkpoint: absent.safetensors}"))
    assert any("teacher.checkpoint: no such file 'absent.safetensors'" in p for p in _problems(path))


def test_empty_methods_is_refused(tmp_path):
    path = _write(tmp_path, BASE)
    assert any("a recipe needs at least one method" in p for p in _problems(path, ["methods={}"]))


def test_model_build_errors_become_recipe_errors(tmp_path):
    path = _write(tmp_path, BASE)
    problems = _problems(path, ["student.hidden=[-1]"])
    assert any("student" in p or "models" in p for p in problems)


@pytest.mark.parametrize("override", ["data.batch_size=0", "data.train_limit=-5"])
def test_data_module_ranges_are_validated(tmp_path, override):
    _problems(_write(tmp_path, BASE), [override])


def test_empty_student_section_is_refused(tmp_path):
    path = _write(tmp_path, "name: t\ndata: {name: digits}\nstudent: {}\nmethods: {scratch: {}}\n")
    problems = _problems(path)
    assert any(p.startswith(f"{path}: student") or "student:" in p for p in problems)


def test_student_training_method_without_student_is_refused(tmp_path):
    path = _write(tmp_path, "name: t\ndata: {name: digits}\nmethods: {scratch: {}}\n")
    assert any("methods.scratch" in p and "student" in p for p in _problems(path))


def test_a_method_sets_its_own_epochs_and_optimizer_over_the_recipes(tmp_path):
    recipe = load_recipe(str(_write(tmp_path, BASE + "optimizer: {lr: 1e-3, name: sgd}\n")),
                         ["methods.kd.max_epochs=7", "methods.kd.optimizer={lr: 0.1}"])
    kd, scratch = recipe.methods["kd"], recipe.methods["scratch"]
    assert kd.max_epochs == 7 and kd.optimizer.lr == 0.1 and kd.optimizer.name == "sgd"  # laid over the recipe's section
    assert scratch.max_epochs is None and scratch.optimizer is None
    assert recipe.resolved["methods"]["kd"]["max_epochs"] == 7 and recipe.resolved["methods"]["kd"]["optimizer"]["lr"] == 0.1
    problems = _problems(_write(tmp_path, BASE), ["methods.kd.max_epochs=0", "methods.kd.optimizer={lr: -1}", "methods.scratch.optimizer=3"])
    assert any("methods.kd.max_epochs" in p and ">= 1" in p for p in problems)
    assert any("methods.kd.optimizer.lr" in p for p in problems)
    assert any("methods.scratch.optimizer: expected a mapping" in p for p in problems)
