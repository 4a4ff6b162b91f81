"""Phased DMD's claim on a class-conditional mixture whose classes own 4 tight sub-modes each
(toy2d-conditional, ``class_submode_mixture``): within-class sub-mode coverage and evenness beat
4-step `dmd2` with stochastic gradient truncation by more than a std, with SWD at most 10% worse.

Per seed: a rectified-flow MLP teacher (128 x 3, 100 epochs, label dropout 0.1, reused); then in one
recipe (one evaluator, one validation draw) `dmd2` at 4 steps without the GAN (the truncated baseline:
each iteration backpropagates through one random step of the 4) and `phased-dmd` at 4 steps in 2
phases of ``--iterations / 2`` (experts as teacher copies), both from the teacher's weights for
``--iterations`` iterations (TTUR 5, unguided real score). Scores against the test split and against
the teacher's 64-step samples (``reference: teacher``); sub-modes: `sample_metrics.within_class_modes`.

Run (single-threaded):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_phased_dmd.py --seed 0   # then 1, 2
    python benchmarks/diffusion_phased_dmd.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import RESULTS, write_results
from dm_common import MLP, cell, network_teacher, run, summary_table

FOLDER = "diffusion_phased_dmd"
PARTIAL = RESULTS / "diffusion_phased_dmd.partial"
DATA = {"name": "toy2d-conditional", "distribution": "class_submode_mixture", "batch_size": 512, "num_test": 5000}
BATCHES = 40
KEYS = ["swd", "swd_to_teacher", "submodes_kept", "submode_evenness", "class_acc", "high_quality", "variance_ratio"]


def one_seed(seed: int, iterations: int, lr: float, phases: int) -> None:
    torch.set_num_threads(1)
    started = time.time()
    teacher = str(network_teacher(FOLDER, DATA, seed, label_dropout=0.1))
    recipe = {"name": f"phased-seed{seed}", "seed": seed, "data": DATA, "teacher": {**MLP, "checkpoint": teacher}, "student": MLP,
              "trainer": {"max_epochs": iterations // BATCHES, "progress_bar": False},
              "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
              "evaluation": {"num_samples": 5000, "teacher_steps": 64, "student_steps": [4], "reference": "teacher"},
              "methods": {"dmd2": {"name": "dmd2", "num_steps": 4},
                          "phased": {"name": "phased-dmd", "num_steps": 4, "phases": phases, "phase_iterations": iterations // phases}}}
    rows = run(recipe, FOLDER)
    PARTIAL.mkdir(parents=True, exist_ok=True)
    (PARTIAL / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "iterations": iterations, "lr": lr, "phases": phases, "rows": rows,
                                                          "seconds": round(time.time() - started)}, indent=2))


def summarise() -> None:
    seeds, s = summary_table(PARTIAL, KEYS)
    x = seeds[0]
    lines = ["# Phased DMD against truncated DMD2 on the sub-mode mixture (4 steps)", "",
             f"Mean ± std over seeds {[y['seed'] for y in seeds]}; {x['iterations']} iterations from the teacher (batch 512, Adam {x['lr']}, "
             f"TTUR 5, no GAN, unguided); phased-dmd in {x['phases']} phases of {x['iterations'] // x['phases']}. 5,000 samples against "
             "the test split (swd) and the teacher's 64-step samples (swd to teacher). Sub-modes kept: the share of a class's 4 sub-modes "
             "that get >= 10% of their fair count; evenness: the entropy of a class's samples over its sub-modes / log 4. "
             "Produced by benchmarks/diffusion_phased_dmd.py.", "",
             "| model | NFE | " + " | ".join(k.replace("_", " ") for k in KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    for title, label, nfe in (("teacher", "teacher", 64), ("dmd2, truncated", "dmd2", 4), ("phased-dmd", "phased", 4)):
        lines.append(f"| {title} | {nfe} | " + " | ".join(cell(s, label, f"{k}@{nfe}") for k in KEYS) + " |")
    m = lambda label, key: s.get(label, {}).get(f"{key}@4", (float("nan"), float("nan")))  # noqa: E731
    beats = lambda key: m("phased", key)[0] - m("dmd2", key)[0] > max(m("phased", key)[1], m("dmd2", key)[1])  # noqa: E731
    ratio = m("phased", "swd")[0] / m("dmd2", "swd")[0]
    verdict = lambda ok: "**holds**" if ok else "**does not hold**"  # noqa: E731
    lines += ["", "Claim:",
              f"- Sub-modes kept {m('phased', 'submodes_kept')[0]:.3f} vs {m('dmd2', 'submodes_kept')[0]:.3f} and evenness "
              f"{m('phased', 'submode_evenness')[0]:.3f} vs {m('dmd2', 'submode_evenness')[0]:.3f} (each must beat by > 1 std), swd "
              f"{ratio:.3f}x dmd2's (must be <= 1.1x): "
              f"{verdict(beats('submodes_kept') and beats('submode_evenness') and ratio <= 1.1)}."]
    write_results("diffusion_phased_dmd", {"seeds": [y["seed"] for y in seeds], "summary": s, "swd_ratio": ratio,
                                           "seconds_per_seed": [y["seconds"] for y in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--phases", type=int, default=2)
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    summarise() if args.summarise else one_seed(args.seed, args.iterations, args.lr, args.phases)


if __name__ == "__main__":
    main()
