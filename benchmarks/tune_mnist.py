"""Hyperparameter selection for benchmark (a) on the VALIDATION split (the test split is not read).

One seed, the smaller student; each method's grid follows its paper's / official code's range.
Run: .venv/bin/python benchmarks/tune_mnist.py   -> results/tune_mnist.{json,md}
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml
from common import write_results

from anydistill.catalog import load_recipe
from anydistill.core.rundir import RunDir
from anydistill.runner import run_recipe

GRID = {
    "kd": [{"temperature": t, "alpha": a} for t in (1.0, 2.0, 4.0) for a in (0.5, 0.9)],
    "dkd": [{"temperature": t, "beta": b, "warmup_epochs": 1} for t in (1.0, 4.0) for b in (1.0, 8.0)],
    "attention-transfer": [{"beta": b} for b in (10.0, 100.0, 1000.0)],
    "fitnets": [{"temperature": t, "hint_epochs": 1} for t in (1.0, 3.0)],
}


def main() -> None:
    base = yaml.safe_load(Path("recipes/mnist/benchmark.yaml").read_text())
    base["methods"] = {"scratch": {}}
    for name, grid in GRID.items():
        for i, params in enumerate(grid):
            keep = {k: v for k, v in base_params(name).items() if k not in params}
            base["methods"][f"{name}#{i}"] = {"name": name, **keep, **params}
    base["trainer"]["progress_bar"] = False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tune.yaml"
        path.write_text(yaml.safe_dump(base, sort_keys=False))
        recipe = load_recipe(str(path))
        metrics = run_recipe(recipe, RunDir.create(Path(tmp), "tune"))
    rows = ["| label | method | parameters | val accuracy (%) |", "|---|---|---|---:|"]
    chosen = {}
    for label, entry in metrics.items():
        if label == "teacher":
            continue
        params = {k: v for k, v in recipe.resolved["methods"][label].items() if k != "name"}
        rows.append(f"| {label} | {entry['method']} | {params} | {entry['val_accuracy'] * 100:.2f} |")
        best = chosen.get(entry["method"])
        if best is None or entry["val_accuracy"] > best["val_accuracy"]:
            chosen[entry["method"]] = {"val_accuracy": entry["val_accuracy"], "params": params}
    text = "\n".join(["# Benchmark (a) tuning on the MNIST validation split", "",
                      "Student small-cnn [4, 8] h32, seed 0, 3 epochs, shifted inputs. Selection by validation accuracy only.", "",
                      *rows, "", "Chosen:", "", *[f"- {m}: {c['params']} (val {c['val_accuracy'] * 100:.2f})" for m, c in chosen.items()], ""])
    write_results("tune_mnist", {"val_only": {k: v["val_accuracy"] for k, v in metrics.items()}, "chosen": chosen}, text)
    print(text)


def base_params(name: str) -> dict:
    methods = yaml.safe_load(Path("recipes/mnist/benchmark.yaml").read_text())["methods"]
    return dict(methods.get(name) or {})


if __name__ == "__main__":
    main()
