"""Phased DMD's claim on a class-conditional mixture whose classes own 4 tight sub-modes each
(toy2d-conditional, ``class_submode_mixture``): within-class sub-mode coverage and evenness beat
4-step `dmd2` with stochastic gradient truncation by more than a std, with SWD at most 10% worse.

Per seed: a rectified-flow MLP teacher (128 x 3, 100 epochs, label dropout 0.1, reused); then in one
recipe (one evaluator, one validation draw) `dmd2` at 4 steps without the GAN (the truncated baseline:
each iteration backpropagates through one random step of the 4) and `phased-dmd` at 4 steps in 2
phases of ``--iterations / 2`` (experts as teacher copies), both from the teacher's weights for
``--iterations`` iterations (TTUR 5, unguided real score). Scores against the test split and against
the teacher's 64-step samples (``reference: teacher``); sub-modes: `sample_metrics.within_class_modes`.

``--digits``: the same comparison on 8x8 digits (within-class diversity: the evaluator's mean pairwise
distance within a class; FD in its digit-classifier features), with the conv-UNet teacher of
benchmarks/diffusion_dm_digits.py (shared, guided at w = 2 for both methods), batch 128, 1,000 samples
(results ``*_digits``).

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
DIGITS_KEYS = ["fd", "fd_to_teacher", "diversity", "class_acc", "variance_ratio"]
UNET = {"name": "conv-denoiser", "schedule": "rectified-flow", "prediction": "velocity", "width": 16}


def one_seed(seed: int, iterations: int, lr: float, phases: int, digits: bool = False) -> None:
    torch.set_num_threads(1)
    started = time.time()
    if digits:  # the teacher of benchmarks/diffusion_dm_digits.py (one per seed, shared)
        data, model, batches, guided = {"name": "digits-generation", "batch_size": 128}, UNET, 10, {"cfg": 2.0}
        teacher = str(network_teacher("diffusion_dm_digits", data, seed, epochs=200, label_dropout=0.1, model=UNET))
    else:
        data, model, batches, guided = DATA, MLP, BATCHES, {}
        teacher = str(network_teacher(FOLDER, DATA, seed, label_dropout=0.1))
    recipe = {"name": f"phased-seed{seed}{'-digits' if digits else ''}", "seed": seed, "data": data,
              "teacher": {**model, "checkpoint": teacher}, "student": model,
              "trainer": {"max_epochs": iterations // batches, "progress_bar": False},
              "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
              "evaluation": {"num_samples": 1000 if digits else 5000, "teacher_steps": 64, "student_steps": [4], "reference": "teacher",
                             **guided},
              "methods": {"dmd2": {"name": "dmd2", "num_steps": 4, **guided},
                          "phased": {"name": "phased-dmd", "num_steps": 4, "phases": phases, "phase_iterations": iterations // phases,
                                     **guided}}}
    rows = run(recipe, FOLDER)
    partial = PARTIAL.with_name(f"diffusion_phased_dmd{'_digits' if digits else ''}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "iterations": iterations, "lr": lr, "phases": phases, "rows": rows,
                                                          "digits": digits, "seconds": round(time.time() - started)}, indent=2))


def summarise_digits() -> None:
    seeds, s = summary_table(PARTIAL.with_name("diffusion_phased_dmd_digits.partial"), DIGITS_KEYS)
    x = seeds[0]
    lines = ["# Phased DMD against truncated DMD2 on 8x8 digits (4 steps, guided at w = 2)", "",
             f"Mean ± std over seeds {[y['seed'] for y in seeds]}; {x['iterations']} iterations from the conv-UNet teacher (batch 128, Adam "
             f"{x['lr']}, TTUR 5, no GAN); phased-dmd in {x['phases']} phases. 1,000 samples; FD in the evaluator's digit-classifier "
             "features; diversity: mean pairwise distance within a class. Produced by benchmarks/diffusion_phased_dmd.py --digits.", "",
             "| model | NFE | " + " | ".join(k.replace("_", " ") for k in DIGITS_KEYS) + " |", "|---|---|" + "---|" * len(DIGITS_KEYS)]
    for title, label, nfe in (("teacher", "teacher", 64), ("dmd2, truncated", "dmd2", 4), ("phased-dmd", "phased", 4)):
        lines.append(f"| {title} | {nfe} | " + " | ".join(cell(s, label, f"{k}@{nfe}") for k in DIGITS_KEYS) + " |")
    m = lambda label, key: s.get(label, {}).get(f"{key}@4", (float("nan"), float("nan")))  # noqa: E731
    beats = m("phased", "diversity")[0] - m("dmd2", "diversity")[0] > max(m("phased", "diversity")[1], m("dmd2", "diversity")[1])
    ratio = m("phased", "fd")[0] / m("dmd2", "fd")[0]
    lines += ["", f"Claim: diversity {m('phased', 'diversity')[0]:.3f} vs {m('dmd2', 'diversity')[0]:.3f} (must beat by > 1 std), FD "
              f"{ratio:.3f}x dmd2's (must be <= 1.1x): {'**holds**' if beats and ratio <= 1.1 else '**does not hold**'}."]
    write_results("diffusion_phased_dmd_digits", {"seeds": [y["seed"] for y in seeds], "summary": s, "fd_ratio": ratio,
                                                  "seconds_per_seed": [y["seconds"] for y in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


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
    parser.add_argument("--digits", action="store_true", help="8x8 digits with the shared conv-UNet teacher (results *_digits)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    if args.summarise:
        summarise_digits() if args.digits else summarise()
    else:
        one_seed(args.seed, args.iterations, args.lr, args.phases, args.digits)


if __name__ == "__main__":
    main()
