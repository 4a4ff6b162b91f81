"""What a study leaves on disk and prints: trials.csv, best.yaml, the plots and one progress line per trial."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from anydistill.core.rundir import write_atomic
from anydistill.core.space import Space
from anydistill.study.search_space import trial_overrides


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_line(study: Any, trial: Any, finished: int, trials: int, metric: str) -> str:
    state = trial.state.name
    if state == "PRUNED" and trial.intermediate_values:
        epoch, last = max(trial.intermediate_values.items())
        value = f"{metric} {last:.4f} at epoch {epoch}"
    else:
        value = f"{metric} {trial.value:.4f}" if trial.value is not None else "no score"
    try:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        best = "no best yet"
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    return f"[{finished}/{trials}] trial #{trial.number} {state:<8} {value}  {best}  {params}  ({seconds:.1f} s)"


def write_outputs(study: Any, run_dir: Path, label: str, space: dict[str, Space], metric: str, *, plots: bool,
                  base_path: Path) -> tuple[dict[str, Any], float | None]:
    """trials.csv and best.yaml (and, with ``plots``, the PNGs); returns (best params, best value)."""
    keys = list(dict.fromkeys([*space, *(k for t in study.trials for k in t.params)]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", *keys, "value", "duration_s", "last_epoch"])
    for t in study.trials:
        last_epoch = max(t.intermediate_values) if t.intermediate_values else ""
        writer.writerow([t.number, t.state.name, *(t.params.get(k, "") for k in keys),
                         "" if t.value is None else t.value,
                         "" if t.duration is None else round(t.duration.total_seconds(), 3), last_epoch])
    write_atomic(run_dir / "trials.csv", buffer.getvalue())
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        return {}, None
    best = study.best_trial
    entry: dict[str, Any] = {}
    for key, value in best.params.items():
        if key.startswith("optimizer."):
            entry.setdefault("optimizer", {})[key.split(".", 1)[1]] = value
        else:
            entry[key] = value
    sets = " ".join(f"--set {s}" for s in trial_overrides(label, best.params))
    header = (f"# Best of {len(complete)} complete trials of study {study.study_name}: validation {metric} {best.value:.4f} "
              f"(trial #{best.number}).\n# Merge into the recipe, or run: anydistill run {base_path} {sets}\n")
    write_atomic(run_dir / "best.yaml", header + yaml.safe_dump({"methods": {label: entry}}, sort_keys=False))
    if plots:
        plot_study(study, run_dir / "plots", metric)
    return dict(best.params), float(best.value)


def plot_study(study: Any, folder: Path, metric: str) -> None:
    """history.png (every trial's score and the best so far), importance.png (Optuna's default
    importance evaluator, when at least two trials completed) and parallel.png (parameters against score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = [t for t in study.trials if t.state.name == "PRUNED" and t.intermediate_values]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([t.number for t in complete], [t.value for t in complete], s=18, label="complete")
    if pruned:
        ax.scatter([t.number for t in pruned], [list(t.intermediate_values.values())[-1] for t in pruned], marker="x",
                   color="grey", label="pruned (last epoch)")
    best, line = None, []
    for t in complete:
        best = t.value if best is None else (max if maximize else min)(best, t.value)
        line.append((t.number, best))
    if line:
        ax.step(*zip(*line), where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=f"validation {metric}", title=study.study_name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "history.png", dpi=110)
    plt.close(fig)

    params = sorted({k for t in complete for k in t.params})
    if len(complete) >= 2 and params:
        try:
            with warnings.catch_warnings():  # on a few trials it warns that all importances are equal: the plot shows it
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # e.g. every completed trial has the same score
            importances = {}
        if importances:
            fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances)))
            names = list(importances)[::-1]
            ax.barh(names, [importances[n] for n in names])
            ax.set(xlabel="importance (Optuna's PED-ANOVA, normalised)", title=f"{study.study_name}: parameter importances")
            fig.tight_layout()
            fig.savefig(folder / "importance.png", dpi=110)
            plt.close(fig)
    if len(complete) >= 2 and params:
        fig, ax = plt.subplots(figsize=(1.6 * len(params) + 2, 3.5))
        values = [t.value for t in complete]
        low, high = min(values), max(values)
        cmap = plt.get_cmap("viridis")
        for t in complete:
            ys = []
            for p in params:
                column = [u.params.get(p) for u in complete if isinstance(u.params.get(p), int | float)]
                v = t.params.get(p)
                if not isinstance(v, int | float) or not column:
                    ys.append(float("nan"))
                    continue
                log = isinstance(study.trials[t.number].distributions.get(p), optuna.distributions.FloatDistribution) and \
                    study.trials[t.number].distributions[p].log
                f = math.log if log else (lambda x: x)
                lo, hi = f(min(column)), f(max(column))
                ys.append(0.5 if hi == lo else (f(v) - lo) / (hi - lo))
            ax.plot(range(len(params)), ys, color=cmap(0.5 if high == low else (t.value - low) / (high - low)), alpha=0.8)
        ax.set_xticks(range(len(params)), params, rotation=20, fontsize=8)
        ax.set(ylabel="position in the range tried", title=f"{study.study_name}: parameters (colour: {metric})")
        fig.tight_layout()
        fig.savefig(folder / "parallel.png", dpi=110)
        plt.close(fig)
