"""Benchmark (a'), the counterpart of mnist_kd.py without input shifts: scratch against KD on the
plain training images (teacher logits from the signal cache), same students and KD settings.

It records the negative result behind the demo's and benchmark's use of shifted inputs.
Run: .venv/bin/python benchmarks/mnist_kd_no_shift.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml
from common import mean_std, write_results

from anydistill.catalog import load_recipe
from anydistill.core.rundir import RunDir
from anydistill.runner import run_recipe
from mnist_kd import HIDDEN, STUDENTS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    base = yaml.safe_load(Path("recipes/mnist/benchmark.yaml").read_text())
    base["data"]["augment"] = False
    base["cache"] = {"enabled": True}
    base["methods"] = {"scratch": {}, "kd": base["methods"]["kd"]}
    rows = ["| student | model | test accuracy (%) | val accuracy (%) |", "|---|---|---:|---:|"]
    summary: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe_path = Path(tmp) / "no-shift.yaml"
        recipe_path.write_text(yaml.safe_dump(base, sort_keys=False))
        for size, channels in STUDENTS.items():
            per_label: dict[str, list[dict]] = {}
            for seed in args.seeds:
                recipe = load_recipe(str(recipe_path), [
                    f"seed={seed}", f"data.seed={seed}", f"student.channels={channels}", f"student.hidden={HIDDEN[size]}",
                    f"trainer.max_epochs={args.epochs}", "trainer.progress_bar=false",
                ])
                metrics = run_recipe(recipe, RunDir.create(Path(tmp), f"{size}-{seed}"))
                for label in ("scratch", "kd"):
                    per_label.setdefault(label, []).append(metrics[label])
            for label, entries in per_label.items():
                acc = mean_std([e["accuracy"] * 100 for e in entries])
                val = mean_std([e["val_accuracy"] * 100 for e in entries])
                summary.setdefault(size, {})[label] = {"accuracy": acc, "val_accuracy": val}
                rows.append(f"| {size} | {label} | {acc[0]:.2f} ± {acc[1]:.2f} | {val[0]:.2f} ± {val[1]:.2f} |")
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(["# MNIST without input shifts: scratch vs KD (teacher logits from the signal cache)", "",
                      f"Seeds {args.seeds}, {args.epochs} epochs, KD settings of recipes/mnist/benchmark.yaml; mean ± std.", "",
                      *rows, ""])
    write_results("mnist_kd_no_shift", {"seeds": args.seeds, "epochs": args.epochs, "summary": summary}, text)
    print(text)


if __name__ == "__main__":
    main()
