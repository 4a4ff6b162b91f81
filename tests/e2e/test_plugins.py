"""Plugins: a pip-installed package adds methods, data and models through entry points, and the
CLI, `validate` and `methods` see them; a plugin that fails to import is named in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.helpers import ANYDISTILL, TINY_RECIPE, quiet_env

PLUGIN_CODE = '''\
"""A third-party package adding one method, one model and one data module to anydistill."""
import torch.nn as nn

from anydistill.classifier.methods.kd import KD
from anydistill.data.digits import DigitsData


class HalfKD(KD):
    """KD with the hard-label weight halved: enough to tell the plugin's method from KD."""

    paper = "a plugin's own method"

    def __init__(self, student, teacher, optimizer=None, *, temperature: float = 4.0):
        super().__init__(student, teacher, optimizer, temperature=temperature, alpha=0.5)


def wide_mlp(input_shape, num_classes, *, width: int = 24) -> nn.Module:
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, num_classes))


class FewDigits(DigitsData):
    """The digits data, named by the plugin."""
'''

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.0.1"

[project.entry-points."anydistill.methods"]
{entries}
'''


def install_plugin(tmp_path: Path, name: str, module: str, code: str, entries: dict[str, dict[str, str]]) -> Path:
    """pip-install a package made in ``tmp_path`` into its own folder; return that folder."""
    source = tmp_path / f"{name}-src"
    (source / module).mkdir(parents=True)
    (source / module / "__init__.py").write_text(code)
    groups = "\n".join(f'[project.entry-points."anydistill.{group}"]\n' + "\n".join(f'"{k}" = "{v}"' for k, v in items.items()) + "\n"
                       for group, items in entries.items())
    (source / "pyproject.toml").write_text(PYPROJECT.split("[project.entry-points")[0].format(name=name) + groups)
    target = tmp_path / f"{name}-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True, timeout=300)
    return target


def run_with(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**quiet_env(), "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*ANYDISTILL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plugin")
    return install_plugin(tmp, "anydistill-halfkd", "halfkd", PLUGIN_CODE, {
        "methods": {"half-kd": "halfkd:HalfKD"},
        "models": {"wide-mlp": "halfkd:wide_mlp"},
        "data": {"few-digits": "halfkd:FewDigits"},
    })


def test_installed_plugin_is_seen_by_methods_validate_and_run(plugin_site: Path, tmp_path: Path) -> None:
    listed = run_with(plugin_site, "methods", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["half-kd"]["family"] == "classifier" and "kd" in rows

    recipe = (TINY_RECIPE.replace("name: digits", "name: few-digits").replace("{name: mlp, hidden: [16]}", "{name: wide-mlp, width: 12}")
              .replace("  kd: {temperature: 2.0, alpha: 0.7}", "  half-kd: {temperature: 3.0}").replace("max_epochs: 2", "max_epochs: 1"))
    (tmp_path / "plugin.yaml").write_text(recipe)
    valid = run_with(plugin_site, "validate", "plugin.yaml", cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    ran = run_with(plugin_site, "run", "plugin.yaml", "--name", "p", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "p" / "metrics.json").read_text())
    assert metrics["half-kd"]["method"] == "half-kd" and metrics["half-kd"]["params"] == 64 * 12 + 12 + 12 * 10 + 10
    # The saved config names the plugin's entries as the plugin does: it re-validates wherever the plugin is installed.
    saved = run_with(plugin_site, "validate", str(tmp_path / "runs" / "p" / "config.yaml"), cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert run_with(tmp_path, "validate", str(tmp_path / "runs" / "p" / "config.yaml"), cwd=tmp_path).returncode == 2


def test_plugin_that_fails_to_import_is_named(tmp_path: Path) -> None:
    site = install_plugin(tmp_path, "anydistill-broken", "brokenplugin", "import a_module_that_does_not_exist\n",
                          {"methods": {"broken-kd": "brokenplugin:BrokenKD"}})
    (tmp_path / "broken.yaml").write_text(TINY_RECIPE.replace("  kd: {temperature: 2.0, alpha: 0.7}", "  broken-kd: {}"))
    result = run_with(site, "run", "broken.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "anydistill-broken" in lines[0] and "brokenplugin:BrokenKD" in lines[0] and "ModuleNotFoundError" in lines[0]
    assert not (tmp_path / "runs").exists()
    listed = run_with(site, "methods", cwd=tmp_path)
    assert listed.returncode == 2 and "anydistill-broken" in listed.stderr and "kd" in listed.stdout
