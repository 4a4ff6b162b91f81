"""DisBack's claim on the 25-Gaussian grid: with the real score walking the degradation path back, the
one-step generator reaches a sliced Wasserstein distance <= 1.2x the teacher's (64 Euler steps) in
>= 1.5x fewer iterations than `dmd2`, and ends no worse.

Per seed: a rectified-flow MLP teacher trained on the grid (100 epochs, kept between invocations),
then `dmd2` and `disback` from its weights in one recipe (one evaluator), with learning curves on the
validation split every ``--curve-every`` iterations; each curve holds the teacher's 64-step value on
the same draw. DisBack's stage 1 (10 snapshots x 100 path updates) comes first; iterations to the
threshold are counted from the start of training of the generator (stage 2) and in total.

``--digits``: the same claim on 8x8 digits (the threshold on the Fréchet distance in the evaluator's
digit-classifier features): a class-conditional conv-UNet teacher (width 16, 200 epochs, label dropout
0.1) guided at w = 2 for both methods, batch 128, curves on 500 samples (results ``*_digits``).

Run (single-threaded; ``--iterations`` generator-phase iterations of batch 512):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_disback.py --seed 0   # then 1, 2
    python benchmarks/diffusion_disback.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import RESULTS, mean_std, write_results
from dm_common import MLP, RUNS, cell, network_teacher, run, summary_table

FOLDER = "diffusion_disback"
PARTIAL = RESULTS / "diffusion_disback.partial"
DATA = {"name": "toy2d", "distribution": "twenty_five_gaussians", "batch_size": 512, "num_test": 5000}
BATCHES = 40  # 20,000 training points / 512
PATH = {"path_checkpoints": 10, "path_interval": 100}
THRESHOLD = 1.2
DIGITS = {"name": "digits-generation", "batch_size": 128}
UNET = {"name": "conv-denoiser", "schedule": "rectified-flow", "prediction": "velocity", "width": 16}


def one_seed(seed: int, iterations: int, lr: float, switch_every: int, curve_every: int, path_lr: float | None = None, tag: str = "",
             digits: bool = False) -> None:
    torch.set_num_threads(1)
    started = time.time()
    data, model, batches = (DIGITS, UNET, 10) if digits else (DATA, MLP, BATCHES)
    # digits: the teacher of benchmarks/diffusion_dm_digits.py (one per seed, shared)
    teacher = network_teacher("diffusion_dm_digits", data, seed, epochs=200, label_dropout=0.1, model=UNET) if digits else \
        network_teacher(FOLDER, data, seed)
    path_epochs = PATH["path_checkpoints"] * PATH["path_interval"] // batches
    common = {"update_ratio": 5, "gan_weight_generator": 0.0, "gan_weight_discriminator": 0.0, **({"cfg": 2.0} if digits else {})}
    name = f"seed{seed}-it{iterations}{tag}"
    recipe = {
        "name": name, "seed": seed, "data": data, "teacher": {**model, "checkpoint": str(teacher)}, "student": model,
        "trainer": {"max_epochs": iterations // batches, "progress_bar": False},
        "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
        "evaluation": {"num_samples": 1000 if digits else 5000, "teacher_steps": 64, "student_steps": [1], "curve_every": curve_every,
                       "curve_samples": 500 if digits else 2000, **({"cfg": 2.0} if digits else {})},
        "methods": {"dmd2": {**common},
                    "disback": {**common, **PATH, "switch_every": switch_every, "max_epochs": iterations // batches + path_epochs,
                                **({"path_lr": path_lr} if path_lr else {})}},
    }
    metrics = run(recipe, FOLDER)
    curves = {label: json.loads((RUNS / FOLDER / name / "logs" / label / "curve.json").read_text()) for label in ("dmd2", "disback")}
    partial = PARTIAL.with_name(PARTIAL.name.replace(".partial", f"{tag}.partial"))
    partial.mkdir(parents=True, exist_ok=True)
    (partial / f"seed{seed}.json").write_text(json.dumps({
        "seed": seed, "iterations": iterations, "lr": lr, "switch_every": switch_every, "path_lr": path_lr, "digits": digits,
        "seconds": round(time.time() - started),
        "rows": metrics, "curves": curves}, indent=2))


def iterations_to(curve: list[dict], offset: int) -> int | None:
    """The first iteration (minus ``offset``) whose student value is <= THRESHOLD x the teacher's."""
    level = THRESHOLD * next(p["value"] for p in curve if p.get("model") == "teacher")
    return next((p["iteration"] - offset for p in curve if p.get("model") == "student" and p["iteration"] >= offset
                 and p["value"] <= level), None)


def summarise(tag: str = "") -> None:
    seeds, s = summary_table(PARTIAL.with_name(PARTIAL.name.replace(".partial", f"{tag}.partial")),
                             ["swd", "mmd", "coverage", "high_quality", "fd", "class_acc", "diversity"])
    digits = seeds[0].get("digits", False)
    metric, columns = ("fd", ("fd", "class_acc", "diversity")) if digits else ("swd", ("swd", "mmd", "coverage", "high_quality"))
    path_steps = PATH["path_checkpoints"] * PATH["path_interval"]
    reach = {"dmd2": [iterations_to(x["curves"]["dmd2"], 0) for x in seeds],
             "disback (stage 2)": [iterations_to(x["curves"]["disback"], path_steps) for x in seeds]}
    reach["disback (total)"] = [None if r is None else r + path_steps for r in reach["disback (stage 2)"]]
    lines = [
        f"# DisBack vs DMD2 on {'8x8 digits (guided at w = 2)' if digits else 'the 25-Gaussian grid'} (one step)", "",
        f"Seeds {[x['seed'] for x in seeds]}; {seeds[0]['iterations']} generator-phase iterations (batch {128 if digits else 512}, "
        f"Adam lr {seeds[0]['lr']}, TTUR 5, no GAN); DisBack records 10 snapshots x 100 path updates (path lr {seeds[0].get('path_lr') or seeds[0]['lr']}) first "
        f"and switches target every "
        f"{seeds[0]['switch_every']} iterations. Final metrics on {'1,000 samples' if digits else '5,000 samples'} against the test "
        f"split; curves on {'500 samples (FD against the validation split)' if digits else '2,000 validation points'}. "
        "Produced by benchmarks/diffusion_disback.py.", "",
        "| model | NFE | " + " | ".join(c.replace("_", " ") for c in columns) + " |", "|---|---|" + "---|" * len(columns),
    ]
    for title, label, nfe in (("teacher", "teacher", 64), ("dmd2", "dmd2", 1), ("disback", "disback", 1)):
        lines.append(f"| {title} | {nfe} | " + " | ".join(cell(s, label, f"{k}@{nfe}") for k in columns) + " |")
    lines += ["", f"Iterations until the validation {metric} is <= {THRESHOLD}x the teacher's (per seed; — = not within the budget):", ""]
    for label, values in reach.items():
        lines.append(f"- {label}: {', '.join('—' if v is None else str(v) for v in values)}")
    done = [r for r in reach["dmd2"] if r is not None], [r for r in reach["disback (stage 2)"] if r is not None]
    fast = bool(done[0] and done[1]) and mean_std(done[0])[0] >= 1.5 * mean_std(done[1])[0]
    final_ok = s["disback"][f"{metric}@1"][0] <= s["dmd2"][f"{metric}@1"][0] + s["dmd2"][f"{metric}@1"][1]
    lines += ["", f"Claim (>= 1.5x fewer iterations to the threshold, final swd no worse): "
                  f"{'**holds**' if fast and final_ok else '**does not hold**'} (faster: {fast}; final no worse: {final_ok})."]
    write_results(f"diffusion_disback{tag}", {"seeds": [x["seed"] for x in seeds], "summary": s, "iterations_to_threshold": reach,
                                        "seconds_per_seed": [x["seconds"] for x in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--switch-every", type=int, default=100)
    parser.add_argument("--curve-every", type=int, default=200, help="optimizer steps between curve points")
    parser.add_argument("--path-lr", type=float, help="the path network's learning rate (default: the fake score's)")
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--digits", action="store_true", help="8x8 digits with a trained conv-UNet teacher (tag _digits)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    tag = args.tag or ("_digits" if args.digits else "")
    if args.summarise:
        summarise(tag)
    else:
        one_seed(args.seed, args.iterations, args.lr, args.switch_every, args.curve_every, args.path_lr, tag, args.digits)


if __name__ == "__main__":
    main()
