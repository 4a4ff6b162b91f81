"""Multi-student distillation's claims on the class-conditional 8-Gaussian mixture (toy2d-conditional):
4 one-step students of the teacher's size beat one by more than a standard deviation; 4 half-width
students (after teacher score matching) stay within 1.1x of one full-size student and are faster.

Per seed: a rectified-flow MLP teacher (128 x 3, trained 100 epochs with label dropout, reused),
then in one recipe (one evaluator) `dmd2` (``one``) and `multi-student` with 4 students (``four``),
both from the teacher's weights; in a second recipe, 4 half-width students (64 x 3, ``four-half``)
that learn the teacher for ``--score-matching`` iterations first. Every arm runs ``--iterations``
distribution-matching iterations (TTUR 5, GAN per dimension at the official ImageNet-64 balance,
unguided teacher). ms / sample is the evaluator's wall clock for 5,000 samples on this machine:
compare ratios within a seed, not absolute times.

Run (single-threaded):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_multi_student.py --seed 0   # then 1, 2
    python benchmarks/diffusion_multi_student.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import RESULTS, mean_std, write_results
from dm_common import MLP, cell, network_teacher, run, summary_table

FOLDER = "diffusion_multi_student"
PARTIAL = RESULTS / "diffusion_multi_student.partial"
DATA = {"name": "toy2d-conditional", "batch_size": 512, "num_test": 5000}
BATCHES = 40
GAN = {"gan_scale": "per-dimension", "gan_weight_generator": 36.9, "gan_weight_discriminator": 122.9}
HALF = {**MLP, "hidden": 64}
# --submodes: the same claims where each class is 4 tight sub-modes (far from one Gaussian, as ImageNet's classes are)
VARIANTS = {"": DATA, "_submodes": {**DATA, "distribution": "class_submode_mixture"}}


def recipe(name: str, seed: int, teacher: str, student: dict, epochs: int, lr: float, methods: dict, data: dict) -> dict:
    return {"name": name, "seed": seed, "data": data, "teacher": {**MLP, "checkpoint": teacher}, "student": student,
            "trainer": {"max_epochs": epochs, "progress_bar": False}, "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
            "evaluation": {"num_samples": 5000, "teacher_steps": 64, "student_steps": [1]}, "methods": methods}


def one_seed(seed: int, iterations: int, score_matching: int, lr: float, tag: str = "") -> None:
    torch.set_num_threads(1)
    started = time.time()
    data, folder = VARIANTS[tag], FOLDER + tag
    teacher = str(network_teacher(folder, data, seed, label_dropout=0.1))
    epochs = iterations // BATCHES
    rows = {}
    full = recipe(f"full-seed{seed}", seed, teacher, MLP, epochs, lr,
                  {"one": {"name": "dmd2", **GAN}, "four": {"name": "multi-student", "students": 4, **GAN}}, data)
    rows.update(run(full, folder))
    half = recipe(f"half-seed{seed}", seed, teacher, HALF, epochs + score_matching // BATCHES, lr,
                  {"four-half": {"name": "multi-student", "students": 4, "score_matching_steps": score_matching, **GAN}}, data)
    rows.update({k: v for k, v in run(half, folder).items() if k != "teacher"})
    partial = PARTIAL.with_name(f"diffusion_multi_student{tag}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "iterations": iterations, "score_matching": score_matching, "lr": lr,
                                                          "rows": rows, "seconds": round(time.time() - started)}, indent=2))


def summarise(tag: str = "") -> None:
    keys = ["swd", "mmd", "coverage", "high_quality", "class_acc", "ms_per_sample", "params", "submodes_kept", "submode_evenness"]
    seeds, s = summary_table(PARTIAL.with_name(f"diffusion_multi_student{tag}.partial"), keys)
    x = seeds[0]
    columns = ("swd", "mmd", "high_quality", "class_acc", *(("submodes_kept", "submode_evenness") if tag else ()), "ms_per_sample")
    lines = [f"# Multi-student DMD2 on toy2d-conditional{', 4 sub-modes per class' if tag else ''} (one step)", "",
             f"Mean ± std over seeds {[y['seed'] for y in seeds]}; {x['iterations']} distribution-matching iterations (batch 512, Adam "
             f"{x['lr']}, TTUR 5, GAN per dimension 36.9 / 122.9, unguided teacher); half-width students first match the teacher for "
             f"{x['score_matching']} iterations. 5,000 samples against the test split. Produced by benchmarks/diffusion_multi_student.py.", "",
             "| arm | NFE | " + " | ".join(c.replace("_", " ") for c in columns) + " | parameters |", "|---|---|" + "---|" * (len(columns) + 1)]
    for title, label, nfe in (("teacher", "teacher", 64), ("one student (dmd2)", "one", 1), ("4 students", "four", 1),
                              ("4 half-width students", "four-half", 1)):
        lines.append(f"| {title} | {nfe} | " + " | ".join(cell(s, label, f"{k}@{nfe}") for k in columns) + f" | {cell(s, label, 'params', 0)} |")
    one, four, half = (s[k]["swd@1"] for k in ("one", "four", "four-half"))
    speed = mean_std([y["rows"]["four-half"]["ms_per_sample@1"] / y["rows"]["one"]["ms_per_sample@1"] for y in seeds])
    verdict = lambda ok: "**holds**" if ok else "**does not hold**"  # noqa: E731
    lines += ["", "Claims:",
              f"- 4 same-size students beat 1 by more than a std: swd {four[0]:.4f} ± {four[1]:.4f} vs {one[0]:.4f} ± {one[1]:.4f}: "
              f"{verdict(one[0] - four[0] > max(one[1], four[1]))}.",
              f"- 4 half-width students within 1.1x of one full-size student ({half[0] / one[0]:.3f}x) and faster (ms / sample ratio, "
              f"per seed then averaged: {speed[0]:.3f} ± {speed[1]:.3f}): {verdict(half[0] <= 1.1 * one[0] and speed[0] < 1)}."]
    write_results(f"diffusion_multi_student{tag}", {"seeds": [y["seed"] for y in seeds], "summary": s, "speed_ratio_half_to_one": speed,
                                              "seconds_per_seed": [y["seconds"] for y in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--score-matching", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--submodes", action="store_true", help="the sub-mode mixture (4 sub-modes per class; tag _submodes)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    tag = "_submodes" if args.submodes else ""
    summarise(tag) if args.summarise else one_seed(args.seed, args.iterations, args.score_matching, args.lr, tag)


if __name__ == "__main__":
    main()
