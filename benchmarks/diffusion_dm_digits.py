"""The distribution-matching claims on 8x8 digits (one step, guided teacher w = 2): DMD2's one-step
FD is at most 1.1x the teacher's at 64 steps; multi-student with K = 2 and K = 5 students (classes
split into consecutive groups) against one student.

Per seed: a class-conditional rectified-flow conv UNet teacher (width 16, ``--teacher-epochs`` epochs of
10 batches of 128, label dropout 0.1, reused); then in one recipe (one evaluator: 1,000 samples, FD in
the features of the evaluator's own digit classifier) `dmd2` at one step and `multi-student` with 2
and 5 students, all from the teacher's weights for ``--iterations`` iterations (TTUR 5, real score
guided at w = 2, GAN per dimension at the official ImageNet-64 balance 36.9 / 122.9).

Run (single-threaded):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_dm_digits.py --seed 0   # then 1, 2
    python benchmarks/diffusion_dm_digits.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import RESULTS, write_results
from dm_common import cell, network_teacher, run, summary_table

FOLDER = "diffusion_dm_digits"
PARTIAL = RESULTS / "diffusion_dm_digits.partial"
DATA = {"name": "digits-generation", "batch_size": 128}
BATCHES = 10
UNET = {"name": "conv-denoiser", "schedule": "rectified-flow", "prediction": "velocity", "width": 16}
GAN = {"gan_scale": "per-dimension", "gan_weight_generator": 36.9, "gan_weight_discriminator": 122.9, "cfg": 2.0}
KEYS = ["fd", "class_acc", "diversity", "ms_per_sample"]


def one_seed(seed: int, iterations: int, teacher_epochs: int, lr: float) -> None:
    torch.set_num_threads(1)
    started = time.time()
    teacher = str(network_teacher(FOLDER, DATA, seed, epochs=teacher_epochs, label_dropout=0.1, model=UNET))
    recipe = {"name": f"digits-seed{seed}", "seed": seed, "data": DATA, "teacher": {**UNET, "checkpoint": teacher}, "student": UNET,
              "trainer": {"max_epochs": iterations // BATCHES, "progress_bar": False},
              "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
              "evaluation": {"num_samples": 1000, "teacher_steps": 64, "student_steps": [1], "cfg": 2.0},
              "methods": {"dmd2": {"name": "dmd2", "num_steps": 1, **GAN},
                          "two": {"name": "multi-student", "students": 2, **GAN},
                          "five": {"name": "multi-student", "students": 5, **GAN}}}
    rows = run(recipe, FOLDER)
    PARTIAL.mkdir(parents=True, exist_ok=True)
    (PARTIAL / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "iterations": iterations, "teacher_epochs": teacher_epochs, "lr": lr,
                                                          "rows": rows, "seconds": round(time.time() - started)}, indent=2))


def summarise() -> None:
    seeds, s = summary_table(PARTIAL, KEYS)
    x = seeds[0]
    lines = ["# Distribution matching on 8x8 digits (one step, guided teacher)", "",
             f"Mean ± std over seeds {[y['seed'] for y in seeds]}; teacher: conv UNet (width 16) trained {x['teacher_epochs']} epochs; "
             f"students: {x['iterations']} iterations from the teacher (batch 128, Adam {x['lr']}, TTUR 5, real score guided at w = 2, "
             "GAN per dimension 36.9 / 122.9). 1,000 samples, labels cycling 0-9; FD in the evaluator's digit-classifier features "
             "against the test split. Produced by benchmarks/diffusion_dm_digits.py.", "",
             "| model | NFE | " + " | ".join(k.replace("_", " ") for k in KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    for title, label, nfe in (("teacher", "teacher", 64), ("dmd2", "dmd2", 1), ("multi-student, K = 2", "two", 1),
                              ("multi-student, K = 5", "five", 1)):
        lines.append(f"| {title} | {nfe} | " + " | ".join(cell(s, label, f"{k}@{nfe}") for k in KEYS) + " |")
    fd = lambda label, nfe=1: s.get(label, {}).get(f"fd@{nfe}", (float("nan"), float("nan")))  # noqa: E731
    per_seed = [y["rows"]["dmd2"]["fd@1"] / y["rows"]["teacher"]["fd@64"] for y in seeds]
    verdict = lambda ok: "**holds**" if ok else "**does not hold**"  # noqa: E731
    beats = lambda label: fd("dmd2")[0] - fd(label)[0] > max(fd("dmd2")[1], fd(label)[1])  # noqa: E731
    lines += ["", "Claims:",
              f"- DMD2's one-step FD <= 1.1x the teacher's at 64 steps: {fd('dmd2')[0]:.2f} vs {fd('teacher', 64)[0]:.2f} "
              f"(per-seed ratios {', '.join(f'{r:.2f}' for r in per_seed)}): {verdict(fd('dmd2')[0] <= 1.1 * fd('teacher', 64)[0])}.",
              f"- K = 2 students beat one by more than a std: {fd('two')[0]:.2f} vs {fd('dmd2')[0]:.2f}: {verdict(beats('two'))}.",
              f"- K = 5 students beat one by more than a std: {fd('five')[0]:.2f} vs {fd('dmd2')[0]:.2f}: {verdict(beats('five'))}."]
    write_results("diffusion_dm_digits", {"seeds": [y["seed"] for y in seeds], "summary": s, "dmd2_to_teacher_fd": per_seed,
                                          "seconds_per_seed": [y["seconds"] for y in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--teacher-epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    summarise() if args.summarise else one_seed(args.seed, args.iterations, args.teacher_epochs, args.lr)


if __name__ == "__main__":
    main()
