"""Diffusion step distillation on 8x8 digits: a guided (w = 2) class-conditional rectified-flow
conv UNet teacher and its 1-4 step students, Fréchet distance / class accuracy / diversity against
the teacher at the same NFE and at 64 NFE.

One invocation runs the shipped recipe ``digits/diffusion-distillation`` for one seed (teacher and
every method, ``--epochs`` epochs each, the progressive rounds filling them); ``--summarise``
gathers the seeds run so far into ``results/diffusion_digits.{json,md}``.

Run (single-threaded):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_digits.py --seed 0 --epochs 60
    python benchmarks/diffusion_digits.py --summarise
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from anydistill.catalog import load_recipe
from anydistill.core.rundir import RunDir
from anydistill.runner import run_recipe
from common import RESULTS, mean_std, write_results

RUNS = Path(__file__).parent / "runs" / "diffusion_digits"
PARTIAL = RESULTS / "diffusion_digits.partial"


def one_seed(seed: int, epochs: int) -> None:
    torch.set_num_threads(1)
    started = time.time()
    rounds = 4  # progressive: 64 -> 4 steps
    overrides = [f"seed={seed}", f"trainer.max_epochs={epochs}", f"methods.progressive.epochs_per_round={epochs // rounds}",
                 "trainer.progress_bar=false"]
    recipe = load_recipe("digits/diffusion-distillation", overrides)
    name = f"seed{seed}-epochs{epochs}"
    if (RUNS / name).exists():
        shutil.rmtree(RUNS / name)
    RUNS.mkdir(parents=True, exist_ok=True)
    metrics = run_recipe(recipe, RunDir.create(RUNS, name))
    PARTIAL.mkdir(parents=True, exist_ok=True)
    (PARTIAL / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "epochs": epochs, "seconds": round(time.time() - started),
                                                          "rows": metrics}, indent=2))


def summarise() -> None:
    seeds = [json.loads(p.read_text()) for p in sorted(PARTIAL.glob("seed*.json"))]
    labels = [label for label in seeds[0]["rows"] if label != "diffusion-teacher"] if seeds else []
    keys = ["fd", "class_acc", "diversity", "coupling", "ms_per_sample"]
    summary = {}
    for label in labels:
        values: dict[str, list[float]] = {}
        for s in seeds:
            for key, value in s["rows"].get(label, {}).items():
                if isinstance(value, (int, float)) and key.split("@")[0] in keys:
                    values.setdefault(key, []).append(float(value))
        summary[label] = {k: mean_std(v) for k, v in values.items()}
    lines = [
        "# Diffusion step distillation on 8x8 digits", "",
        f"Seeds {[s['seed'] for s in seeds]} (mean ± std where more than one); every model trained "
        f"{seeds[0]['epochs'] if seeds else '?'} epochs of 10 batches of 128 (the teacher too). 500 samples, labels cycling "
        "0-9; teacher sampled with guidance w = 2, students distilled from the guided teacher. fd: Fréchet distance in "
        "the features of a SmallCNN digit classifier trained here (vs the 360-image test split); class_acc: that "
        "classifier agrees with the conditioning label; diversity: mean within-class pairwise L2. Produced by "
        "benchmarks/diffusion_digits.py.", "",
        "| model | NFE | fd | class acc | diversity | coupling | ms / sample |", "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        vals = summary[label]
        for nfe in sorted({int(k.split("@")[1]) for k in vals if k.startswith("fd@")}):
            cells = []
            for key in keys:
                m = vals.get(f"{key}@{nfe}")
                cells.append("—" if m is None else (f"{m[0]:.4f}" if len(seeds) == 1 else f"{m[0]:.4f} ± {m[1]:.4f}"))
            lines.append(f"| {label} | {nfe} | " + " | ".join(cells) + " |")
    write_results("diffusion_digits", {"seeds": [s["seed"] for s in seeds], "summary": summary,
                                       "seconds_per_seed": [s["seconds"] for s in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    if args.summarise:
        summarise()
    else:
        one_seed(args.seed, args.epochs)


if __name__ == "__main__":
    main()
