"""A run started from Python with a model registered from Python: its saved config.yaml validates
from the command line, and run.json says how the run was started."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from e2e import api_models
from e2e.helpers import ANYDISTILL, TINY_RECIPE, quiet_env
from anydistill.catalog import load_recipe
from anydistill.core.rundir import RunDir
from anydistill.registries import MODELS
from anydistill.runner import run_recipe

import subprocess

TESTS = Path(__file__).resolve().parents[1]


def test_config_of_a_python_api_run_validates_from_the_cli(tmp_path: Path) -> None:
    if "api-tiny-mlp" not in MODELS:
        MODELS.register("api-tiny-mlp")(api_models.tiny_mlp)
    (tmp_path / "api.yaml").write_text(TINY_RECIPE.replace("{name: mlp, hidden: [16]}", "{name: api-tiny-mlp, width: 6}")
                                       .replace("max_epochs: 2", "max_epochs: 1").replace("  kd: {temperature: 2.0, alpha: 0.7}\n", ""))
    recipe = load_recipe(str(tmp_path / "api.yaml"))
    run_dir = RunDir.create(tmp_path / "runs", "api", is_main_process=True)
    metrics = run_recipe(recipe, run_dir)
    assert metrics["scratch"]["params"] == 64 * 6 + 6 + 6 * 10 + 10

    config = yaml.safe_load((run_dir.path / "config.yaml").read_text())
    assert config["student"]["name"] == "e2e.api_models:tiny_mlp" and config["student"]["width"] == 6
    assert config["methods"]["scratch"]["name"] == "scratch"  # built-in names stay names
    env = {**quiet_env(), "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    validated = subprocess.run([*ANYDISTILL, "validate", str(run_dir.path / "config.yaml")], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    assert validated.returncode == 0, validated.stderr
    info = json.loads((run_dir.path / "run.json").read_text())
    assert "Python API" in info["command"] and not info["command"].startswith("anydistill")
