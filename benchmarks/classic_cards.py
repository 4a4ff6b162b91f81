"""Rewrite the Reproduction table of every classic-loss card (docs/<method>.md) from the result
files of the classic-loss benchmark: one row per track the method ran in (rank, mean ± std,
scratch and kd of the same run, verdict, the longer-budget re-run when there is one), the
CIFAR-100 orderings the papers claim where both methods ran, and the list of result files.

Only the table, the ordering sentence and the "Results:" line change; the card's prose stays.

Run: .venv/bin/python benchmarks/classic_cards.py   (after classic_losses.py / classic_losses_long.py)
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from common import RESULTS, mean_std

DOCS = Path(__file__).resolve().parents[1] / "docs"
# Result files in the order their tracks are listed; each *_long file holds the budget re-runs.
FILES = ["classic_losses", "classic_losses_gru", "classic_losses_2", "classic_losses_mnist5k", "classic_losses_mnist5k_mlp"]
# The CIFAR-100 orderings of RepDistiller / mdistiller the issue asks about: (better, worse).
ORDERINGS = {"crd": [("crd", "kd")], "dkd": [("dkd", "crd")], "reviewkd": [("reviewkd", "crd")]}
# The RepDistiller CIFAR-100 recipes (GPU only): recipe -> its method labels.
GPU_RECIPES = {path.stem: set(yaml.safe_load(path.read_text())["methods"])
               for path in sorted((Path(__file__).resolve().parents[1] / "src/anydistill/recipes/cifar100").glob("*.yaml"))}
HEADER = "| track | rank | test accuracy (%) | scratch | kd | verdict | longer budget |"


def load() -> tuple[dict[str, tuple[str, dict]], dict[str, dict]]:
    """(track -> (results file, track payload), track -> long-budget payload with factor and seed)."""
    tracks, long = {}, {}
    for name in FILES:
        path = RESULTS / f"{name}.json"
        if path.is_file():
            for track, payload in json.loads(path.read_text())["tracks"].items():
                tracks[track] = (name, payload)
    for path in sorted(RESULTS.glob("classic_losses*_long.json")):
        data = json.loads(path.read_text())
        for track, payload in data["tracks"].items():
            long[track] = {**payload, "factor": data["factor"], "seed": data["seed"], "file": path.stem}
    return tracks, long


def percent(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def verdict(method: list[float], scratch: list[float]) -> str:
    (m, s), (b, t) = mean_std(method), mean_std(scratch)
    if abs(m - b) <= max(s, t):
        return "ties scratch"
    return "beats scratch" if m > b else "loses to scratch"


def rows_for(label: str, tracks: dict, long: dict) -> tuple[list[str], list[str], set[str], list[str]]:
    rows, orderings, files, unstable = [], [], set(), []
    for track, (name, payload) in tracks.items():
        methods = payload["methods"]
        if label not in methods:
            continue
        files.add(name)
        ranked = sorted(methods, key=lambda m: -mean_std(methods[m]["test_accuracy"])[0])
        acc = methods[label]["test_accuracy"]
        scratch, kd = methods.get("scratch", {}).get("test_accuracy"), methods.get("kd", {}).get("test_accuracy")
        if scratch and mean_std(scratch)[1] > 0.05:  # a diverged seed makes every verdict of the track a tie: say so
            unstable.append(f"on {payload['title']}, scratch's seeds scored {' / '.join(f'{100 * a:.1f}' for a in scratch)} % "
                            f"({label}: {' / '.join(f'{100 * a:.1f}' for a in acc)} %)")
        budget = "—"
        extra = long.get(track, {}).get("methods", {})
        if label in extra and "scratch" in extra:
            run = long[track]
            budget = (f"{100 * extra[label]['test_accuracy']:.2f} vs scratch {100 * extra['scratch']['test_accuracy']:.2f} "
                      f"at {run['factor']}x epochs (seed {run['seed']})")
            files.add(run["file"])
        rows.append(f"| {payload['title']} | {ranked.index(label) + 1}/{len(ranked)} | {percent(acc)} | "
                    f"{percent(scratch) if scratch else '—'} | {percent(kd) if kd else '—'} | "
                    f"{verdict(acc, scratch) if scratch else '—'} | {budget} |")
        for better, worse in ORDERINGS.get(label, []):
            if better in methods and worse in methods:
                a, b = mean_std(methods[better]["test_accuracy"])[0], mean_std(methods[worse]["test_accuracy"])[0]
                orderings.append(f"{track}: {better.upper()} above {worse.upper()} {'holds' if a > b else 'does not hold'} "
                                 f"({100 * a:.2f} vs {100 * b:.2f})")
    return rows, orderings, files, unstable


def rewrite(card: Path, tracks: dict, long: dict) -> bool:
    lines = card.read_text().splitlines()
    if HEADER not in lines:
        return False
    rows, orderings, files, unstable = rows_for(card.stem, tracks, long)
    start = lines.index(HEADER)
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start + 2 : end] = rows
    ordering = "The CIFAR-100 ordering the paper reports, here: " + "; ".join(orderings) + "." if orderings else None
    seeds = ("A tie there is not a verdict: " + "; ".join(unstable) + ". One scratch seed diverged at its tuned learning "
             "rate (gradient clipping 1.0 on), so compare with its other seeds.") if unstable else None
    at = next((i for i, line in enumerate(lines) if line.startswith("A tie there is not a verdict")), None)
    if at is not None:
        lines[at : at + 1] = [seeds] if seeds else []
    elif seeds:
        lines[start + 2 + len(rows) : start + 2 + len(rows)] = ["", seeds]
    at = next((i for i, line in enumerate(lines) if line.startswith("The CIFAR-100 ordering")), None)
    if at is not None:
        lines[at] = ordering or ""
    elif ordering:
        lines[start + 2 + len(rows) : start + 2 + len(rows)] = ["", ordering]
    gpu = [name for name, methods in GPU_RECIPES.items() if card.stem in methods]
    note = (f"GPU: RepDistiller's CIFAR-100 protocol for this method is `anydistill run cifar100/{gpu[0]}` (and "
            f"{', '.join(f'`cifar100/{g}`' for g in gpu[1:])}); not run here, as no GPU was lent to this work.") if gpu else None
    at = next((i for i, line in enumerate(lines) if line.startswith("GPU: RepDistiller's CIFAR-100 protocol")), None)
    if at is not None:
        lines[at : at + 1] = [note] if note else []
    elif note:
        results_at = next((i for i, line in enumerate(lines) if line.startswith("Results: [")), len(lines))
        lines[results_at:results_at] = [note, ""]
    listed = [n for n in [*FILES, *sorted({f for f in files if f.endswith("_long")})] if n in files]
    results = ("Results: " + ", ".join(f"[{n}.md](../benchmarks/results/{n}.md)" for n in listed) +
               "; each names the command that made it (`benchmarks/classic_losses.py`, then `classic_losses_long.py` "
               "for the budget column; this table: `benchmarks/classic_cards.py`).")
    at = next((i for i, line in enumerate(lines) if line.startswith("Results: [")), None)
    if at is not None:
        lines[at] = results
    card.write_text("\n".join(lines) + "\n")
    return True


def main() -> None:
    tracks, long = load()
    for card in sorted(DOCS.glob("*.md")):
        if rewrite(card, tracks, long):
            print(card.relative_to(DOCS.parent))


if __name__ == "__main__":
    main()
