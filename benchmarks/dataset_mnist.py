"""DC, DSA, DM and MTT on MNIST at IPC 1 and 10 under DC's evaluation protocol, at a CPU budget.

Each set comes from the shipped recipe ``mnist/dataset-distillation`` through the CLI (one
distillation seed; each set scored by 2 fresh ConvNet-3 w128 models, 1000 epochs with DC's MNIST
augmentation). The random-subset and full-data references come from
``dataset_mnist_parity.py``: the same evaluator code and protocol, measured in a separate run
because they cost hours here. Every budget cut is listed in the recipe and the results.

Run: python benchmarks/dataset_mnist.py   (about 2 hours on one core; --report to summarise finished runs)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from common import RESULTS, mean_std, write_results

RUNS = Path(__file__).parent / "runs"
METHODS = ("dc", "dsa", "dm", "mtt")
PUBLISHED = {1: {"dc": 91.7, "dsa": 88.7, "dm": 89.7, "random": 64.9}, 10: {"dc": 97.4, "dsa": 97.8, "dm": 97.5, "random": 95.1}}
IPC1 = ["student.ipc=1", "methods.dc.iterations_per_epoch=100", "methods.dsa.iterations_per_epoch=100"]
# Runs in this order (IPC 10 costs ~20 min of evaluation per method here); the methods of a run
# that did not finish are reported as not run.
PLAN = ((10, ("dm",)), (1, METHODS), (10, ("dc", "dsa", "mtt")))


def run(ipc: int, methods: tuple[str, ...]) -> dict:
    """The metrics of the shipped recipe restricted to ``methods`` (a derived recipe file)."""
    name = f"mnist-dd-ipc{ipc}-{'-'.join(methods)}"
    metrics = RUNS / name / "metrics.json"
    if not metrics.exists():
        from anydistill.catalog import shipped_recipes

        recipe = yaml.safe_load(shipped_recipes()["mnist/dataset-distillation"].read_text())
        recipe["methods"] = {m: recipe["methods"][m] for m in methods}
        path = RUNS / f"{name}.yaml"
        RUNS.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        overrides = (IPC1 if ipc == 1 else []) + ["trainer.progress_bar=false"]
        overrides = [o for o in overrides if o.split(".")[1] in methods or not o.startswith("methods.")]
        command = ["anydistill", "run", str(path), "--runs", str(RUNS), "--name", name]
        if (RUNS / name).exists():  # an interrupted run: continue it (finished models are kept)
            subprocess.run(["anydistill", "run", "--resume", str(RUNS / name)], check=True)
        else:
            subprocess.run([*command, *(f"--set={o}" for o in overrides)], check=True)
    return json.loads(metrics.read_text())


def main() -> None:
    parity = json.loads((RESULTS / "dataset_mnist_parity.json").read_text())["summary"]
    full = parity["full"]["mean"]
    results: dict[str, dict] = {}
    lines = ["# Dataset distillation on MNIST (CPU budget)", "",
             "Evaluator: ConvNet-3 w128, 1000 epochs, DC's MNIST augmentation, 2 models per set, one distillation seed. "
             "Random subset and full data: `dataset_mnist_parity.md` (same evaluator, separate run). Budgets: see "
             "`recipes/mnist/dataset-distillation.yaml` (DM 300 iterations, batch_real 64; DC/DSA 100 iterations at IPC 1, "
             "2 at IPC 10, batch_real 64; MTT width-32 experts, 2 x 5 epochs, 100 iterations).", ""]
    measured: dict[int, dict] = {1: {}, 10: {}}
    for ipc, methods in PLAN:
        if (RUNS / f"mnist-dd-ipc{ipc}-{'-'.join(methods)}" / "metrics.json").exists() or not measured_only():
            measured[ipc].update(run(ipc, methods))
    for ipc in (1, 10):
        metrics = measured[ipc]
        random_mean = parity[str(ipc)]["mean"]
        rows = {"random": {"mean": random_mean, "std": parity[str(ipc)]["std"], "published": PUBLISHED[ipc]["random"]}}
        for method in METHODS:
            if method not in metrics:
                rows[method] = {"not_run": "budget"}
                continue
            accs = [100 * a for a in metrics[method]["accuracies"]]
            mean, std = mean_std(accs)
            rows[method] = {"mean": mean, "std": std, "models": len(accs), "published": PUBLISHED[ipc].get(method),
                            "gap_closed": (mean - random_mean) / (full - random_mean), "beats_random": mean > random_mean,
                            "train_time_s": metrics[method]["train_time_s"]}
        results[str(ipc)] = rows
        lines += [f"## IPC {ipc}", "", "| set | test accuracy (%) | published | gap closed | beats random | distill time (s) |",
                  "|---|---|---|---|---|---|"]
        for name, row in rows.items():
            if "not_run" in row:
                lines.append(f"| {name} | not run this session (CPU budget) | {PUBLISHED[ipc].get(name) or '—'} | — | — | — |")
                continue
            gap = f"{row['gap_closed']:.3f}" if "gap_closed" in row else "—"
            beats = ("yes" if row["beats_random"] else "no") if "beats_random" in row else "—"
            lines.append(f"| {name} | {row['mean']:.2f} ± {row['std']:.2f} | {row.get('published') or '—'} | {gap} | {beats} | "
                         f"{row.get('train_time_s', '—')} |")
        lines.append("")
    lines.append(f"Full training set (same evaluator, {parity['full']['epochs'] + 1} passes): {full:.2f}.")
    write_results("dataset_mnist", results, "\n".join(lines) + "\n")


def measured_only() -> bool:
    """``--report``: summarise what has been measured, without starting new runs."""
    import sys

    return "--report" in sys.argv


if __name__ == "__main__":
    main()
