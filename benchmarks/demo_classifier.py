"""The classifier demo over seeds: `anydistill demo` (recipe demo/classifier: ccexam's MNISTNet into a
13k-param CNN, 100 labelled images of 50,000) at seeds 0, 1, 2, and its pass rule: kd - scratch
>= 3 x the larger of their standard deviations. Each seed is the real command in a subprocess,
timed from start to exit; the labelled draw is fixed (labelled_seed 0), the run seed varies.

Run: .venv/bin/python benchmarks/demo_classifier.py [--seeds 0 1 2]   (about 3 minutes here)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import mean_std, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="demo-classifier-"))
    rows: dict[str, list[dict]] = {}
    seconds = []
    for seed in args.seeds:
        command = [sys.executable, "-m", "anydistill.cli", "demo", "classifier", "--set", f"seed={seed}",
                   "--set", f"data.seed={seed}", "--set", "trainer.progress_bar=false", "--name", f"seed{seed}"]
        started = time.perf_counter()
        subprocess.run(command, cwd=work, check=True, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        metrics = json.loads((work / "runs" / f"seed{seed}" / "metrics.json").read_text())
        for label, row in metrics.items():
            rows.setdefault(label, []).append(row)
        print(seed, {k: round(v["accuracy"] * 100, 2) for k, v in metrics.items()}, f"{seconds[-1]:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    summary = {label: {"test": mean_std([r["accuracy"] * 100 for r in entries]),
                       "val": mean_std([r["val_accuracy"] * 100 for r in entries]),
                       "agreement": mean_std([r["teacher_agreement"] * 100 for r in entries]),
                       "params": entries[0]["params"]} for label, entries in rows.items()}
    (kd, kd_std), (scratch, scratch_std) = summary["kd"]["test"], summary["scratch"]["test"]
    gap, bar = kd - scratch, 3 * max(kd_std, scratch_std)
    wall = mean_std(seconds)
    lines = ["# `anydistill demo` (classifier) over seeds", "",
             "Recipe `demo/classifier`: ccexam's MNISTNet into `small-cnn` [4, 8] h32, 3 epochs of 50,000 MNIST training "
             "images with 2-px shifts, 100 of them labelled (10 per class, labelled_seed 0). KD sees all 50,000 with the "
             "teacher's logits; scratch sees the 100 labelled ones for as many steps. Seeds "
             f"{args.seeds} (run seed and data order); test split, mean ± std.", "",
             "| model | params | test accuracy (%) | val accuracy (%) | teacher agreement (%) |", "|---|---:|---:|---:|---:|"]
    for label, s in summary.items():
        lines.append(f"| {label} | {s['params']:,} | {s['test'][0]:.2f} ± {s['test'][1]:.2f} | {s['val'][0]:.2f} ± {s['val'][1]:.2f} "
                     f"| {s['agreement'][0]:.2f} ± {s['agreement'][1]:.2f} |")
    verdict = "passes" if gap >= bar else "fails"
    lines += ["", f"kd − scratch = {gap:.2f} points; 3 × the larger std = {bar:.2f}: the demo {verdict} its rule.",
              f"Wall time of `anydistill demo` per seed: {wall[0]:.1f} ± {wall[1]:.1f} s on this machine (2 shared cores).", "",
              "Reproduce: `.venv/bin/python benchmarks/demo_classifier.py`"]
    write_results("demo_classifier", {"seeds": args.seeds, "summary": summary, "gap": gap, "three_std": bar,
                                      "passes": gap >= bar, "seconds": seconds}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
