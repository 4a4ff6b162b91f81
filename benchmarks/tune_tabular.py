"""Tuned vs default settings of scratch, KD and DKD on four small classification tasks, with
`anydistill tune` choosing every setting on the VALIDATION split (the test split is read only to
score the final models).

Per dataset (recipes/tabular/*.yaml): the teacher trains once on the full training split (for
MNIST-1k: all 50,000 training images, while the students see 1,000 labelled ones); each method
gets the same number of Optuna trials (TPE, median pruning); then the default and the tuned
settings are trained with 3 other seeds and scored on test.

Run: .venv/bin/python benchmarks/tune_tabular.py   -> results/tune_tabular.{json,md}
     (--quick: 2 trials, 1 seed, 2 epochs: a smoke test of the whole pipeline)
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
from common import mean_std, write_results
from safetensors.torch import save_file

from anydistill.core.teacher import Teacher
from anydistill.runner import build_teacher
from anydistill.catalog import build_models
from anydistill.study.tune import fit_method, load_method_recipe, tune

DATASETS = {  # recipe -> (name in the tables, trials per method, overrides for the teacher's data)
    "tabular/wine": ("wine", None, []),
    "tabular/breast-cancer": ("breast-cancer", None, []),
    "tabular/digits": ("digits", None, []),
    "tabular/mnist-1k": ("MNIST-1k", 10, ["data.train_subset=null"]),
}
METHODS = ("scratch", "kd", "dkd")
WORK = Path("runs/tune_tabular")


def test_accuracy(recipe_name: str, label: str, overrides: list[str]) -> float:
    """Train ``label`` with ``overrides`` and return its test accuracy."""
    recipe, _ = load_method_recipe(recipe_name, label, overrides)
    datamodule = recipe.data.target(**recipe.data.kwargs)
    datamodule.setup()
    _, pretrained = build_models(recipe.data, recipe.student, recipe.teacher)
    teacher = build_teacher(recipe, pretrained) if recipe.methods[label].target.needs_teacher else None
    method = fit_method(recipe, label, datamodule, teacher)
    evaluator = recipe.evaluation.target(data=datamodule, student_spec=recipe.resolved.get("student"), data_name=recipe.data.name,
                                         **recipe.evaluation.kwargs)
    assert evaluator.score_split == "test"
    return evaluator.evaluate(method.student, teacher, label)["accuracy"]


def train_teacher(recipe_name: str, extra: list[str], quick: list[str], folder: Path) -> tuple[str, float, float]:
    """Train the recipe's teacher on the full training split; (weights file, test accuracy, seconds)."""
    recipe, _ = load_method_recipe(recipe_name, "teacher", extra + quick)
    datamodule = recipe.data.target(**recipe.data.kwargs)
    datamodule.setup()
    started = time.perf_counter()
    method = fit_method(recipe, "teacher", datamodule, None)
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in method.student.state_dict().items()}, str(weights))
    evaluator = recipe.evaluation.target(data=datamodule, student_spec=recipe.resolved.get("teacher"), data_name=recipe.data.name)
    teacher = Teacher(method.student)
    return str(weights), evaluator.evaluate(teacher.model, None, "teacher")["accuracy"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per method on the tabular sets")
    parser.add_argument("--mnist-trials", type=int, default=10, help="trials per method on MNIST-1k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 trials, 1 seed, 2 epochs: a smoke test")
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all four)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    quick = ["trainer.max_epochs=2", "methods.teacher.max_epochs=1"] if args.quick else []
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    shutil.rmtree(WORK, ignore_errors=True)
    rows, started_all = {}, time.perf_counter()
    for recipe_name, (title, mnist_trials, teacher_data) in DATASETS.items():
        if args.only and recipe_name not in args.only.split(","):
            continue
        trials = 2 if args.quick else (args.mnist_trials if mnist_trials else args.trials)
        started = time.perf_counter()
        weights, teacher_acc, teacher_s = train_teacher(recipe_name, teacher_data, quick, WORK / title)
        print(f"{title}: teacher test accuracy {teacher_acc:.4f} ({teacher_s:.0f} s)", flush=True)
        common = [f"teacher.checkpoint={weights}"] + [q for q in quick if not q.startswith("methods.teacher")]
        row = {"teacher_test_accuracy": teacher_acc, "trials_per_method": trials, "methods": {}}
        for label in METHODS:
            result = tune(recipe_name, label, trials, overrides=common, runs=WORK / title, study_name=f"{title}-{label}",
                          storage=f"sqlite:///{WORK / 'tune.db'}", printer=lambda line: print("   ", line, flush=True))
            states = [t.state.name for t in result.study.trials]
            scores = {}
            for setting, extra in (("default", []), ("tuned", result.best_overrides)):
                values = [test_accuracy(recipe_name, label, common + extra + [f"seed={s}", f"data.seed={s}"]) for s in seeds]
                scores[setting] = values
            row["methods"][label] = {
                "best_val_accuracy": result.best_value,
                "best_params": result.best_params,
                "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                "test_accuracy": scores,
            }
            d, t = mean_std(scores["default"]), mean_std(scores["tuned"])
            print(f"  {title} {label}: default {d[0]:.4f} ± {d[1]:.4f}, tuned {t[0]:.4f} ± {t[1]:.4f} "
                  f"(val {result.best_value:.4f})", flush=True)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows[title] = row
    payload = {"seeds": seeds, "quick": args.quick, "total_seconds": round(time.perf_counter() - started_all, 1),
               "threads": torch.get_num_threads(), "datasets": rows}
    write_results("tune_tabular" + ("_quick" if args.quick else ""), payload, markdown(payload))


def markdown(payload: dict) -> str:
    lines = [
        "# Tuned vs default: scratch, KD and DKD on small tables (validation-tuned, test-scored)",
        "",
        "`anydistill tune` chose each method's settings on the validation split (Optuna TPE, median pruning on per-epoch "
        "validation accuracy, the **same number of trials per method**; search spaces: each method's `search_space` plus "
        "`optimizer.lr` and `optimizer.weight_decay`). The default and the tuned settings were then trained with "
        f"seeds {payload['seeds']} (not the tuning seed 0) and scored on the test split: test accuracy, mean ± std.",
        "The teacher is an MLP trained once per dataset, in the same run, on the full training split "
        "(MNIST-1k: all 50,000 training images; the students see the 1,000 labelled ones).",
        "",
        "| data | trials/method | teacher | scratch default | scratch tuned | KD default | KD tuned | DKD default | DKD tuned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(values: list[float]) -> str:
        mean, std = mean_std(values)
        return f"{100 * mean:.2f} ± {100 * std:.2f}"

    verdicts = []
    for title, row in payload["datasets"].items():
        m = row["methods"]
        cells = [cell(m[label]["test_accuracy"][s]) for label in METHODS for s in ("default", "tuned")]
        lines.append(f"| {title} | {row['trials_per_method']} | {100 * row['teacher_test_accuracy']:.2f} | " + " | ".join(cells) + " |")
        scratch_mean, scratch_std = mean_std(m["scratch"]["test_accuracy"]["tuned"])
        for label in ("kd", "dkd"):
            mean, std = mean_std(m[label]["test_accuracy"]["tuned"])
            gap = mean - scratch_mean
            if abs(gap) <= max(std, scratch_std):
                verdict = "ties"
            else:
                verdict = "beats" if gap > 0 else "loses to"
            verdicts.append(f"- {title}: tuned {label.upper()} {verdict} tuned scratch ({100 * gap:+.2f} points; "
                            f"std {100 * std:.2f} vs {100 * scratch_std:.2f}).")
    lines += ["", "Where distillation beats a tuned scratch student (a gap within one std counts as a tie):", "", *verdicts, ""]
    lines += ["Best validation accuracy and settings found:", "", "| data | method | val acc | complete / pruned / failed | best settings |",
              "|---|---|---|---|---|"]
    for title, row in payload["datasets"].items():
        for label, info in row["methods"].items():
            settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info["best_params"].items())
            lines.append(f"| {title} | {label} | {100 * info['best_val_accuracy']:.2f} | {info['complete']} / {info['pruned']} / "
                         f"{info['failed']} | {settings} |")
    lines += ["", f"Time: {payload['total_seconds']:.0f} s in all on this machine ({payload['threads']} thread(s), 2 shared cores); "
              + ", ".join(f"{t} {r['seconds']:.0f} s" for t, r in payload["datasets"].items()) + ".",
              "", "Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_tabular.py`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
