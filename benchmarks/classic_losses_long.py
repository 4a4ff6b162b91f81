"""Budget check of the classic-loss benchmark: one seed of every method at several times its epochs,
with the settings `benchmarks/classic_losses.py` chose on validation (read from its results file),
beside scratch at the same budget. A method that loses to scratch at 1x and still loses at 3x is
not held back by the budget alone.

Run after classic_losses.py: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses_long.py [--factor 3]
     -> results/classic_losses_long.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from classic_losses import RUNS, TRACKS, test_row
from common import RESULTS, write_results
from tune_tabular import train_teacher

from anydistill.catalog import load_recipe
from anydistill.study.search_space import trial_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="classic_losses", help="the results file of classic_losses.py to read")
    parser.add_argument("--skip", default="", help="comma-separated TRACK:METHOD pairs not to re-run (their cost here)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    chosen = json.loads((RESULTS / f"{args.name}.json").read_text())
    payload = {"factor": args.factor, "seed": args.seed, "skipped": [s for s in args.skip.split(",") if s], "tracks": {}}
    for track, info in chosen["tracks"].items():
        recipe_name = TRACKS[track][0]
        epochs = load_recipe(recipe_name).trainer.max_epochs * args.factor
        weights, _, _ = train_teacher(recipe_name, [], [], RUNS / f"{args.name}-long" / track)  # the same seeded teacher as the main run
        rows = {}
        for label, row in info["methods"].items():
            if f"{track}:{label}" in args.skip.split(","):
                continue
            started = time.perf_counter()
            overrides = [f"teacher.checkpoint={weights}", f"trainer.max_epochs={epochs}", f"seed={args.seed}", f"data.seed={args.seed}"]
            overrides += trial_overrides(label, row["best_params"])
            accuracy = test_row(recipe_name, label, overrides)["accuracy"]
            rows[label] = {"test_accuracy": accuracy, "at_1x": row["test_accuracy"][chosen["seeds"].index(args.seed)],
                           "seconds": round(time.perf_counter() - started, 1)}
            print(f"{track} {label}: {100 * rows[label]['at_1x']:.2f} at 1x -> {100 * accuracy:.2f} at {args.factor}x", flush=True)
        payload["tracks"][track] = {"title": info["title"], "epochs": epochs, "methods": rows}
    lines = [f"# Classic losses at {args.factor}x the epochs (one seed: {args.seed})", "",
             "The settings chosen on validation by `benchmarks/classic_losses.py`, trained for "
             f"{args.factor}x the recipe's epochs; test accuracy (%) beside the same seed at 1x.", ""]
    for track, info in payload["tracks"].items():
        scratch = info["methods"].get("scratch", {}).get("test_accuracy")
        lines += [f"## {info['title']} ({info['epochs']} epochs)", "", "| method | 1x | " + f"{args.factor}x | {args.factor}x vs scratch |",
                  "|---|---:|---:|---:|"]
        for label, row in info["methods"].items():
            versus = "—" if scratch is None or label == "scratch" else f"{100 * (row['test_accuracy'] - scratch):+.2f}"
            lines.append(f"| {label} | {100 * row['at_1x']:.2f} | {100 * row['test_accuracy']:.2f} | {versus} |")
        lines.append("")
    if payload["skipped"]:
        lines += [f"Not re-run (minutes per run at this budget on one CPU thread): {', '.join(payload['skipped'])}.", ""]
    lines += [f"Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses_long.py --factor {args.factor} --name {args.name}"
              + (f" --skip {args.skip}" if args.skip else "") + "`", ""]
    write_results(f"{args.name}_long", payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
