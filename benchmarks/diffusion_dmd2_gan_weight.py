"""DMD2's GAN weight chosen on validation (issue 20, item 1b): the size-independent weight
(``gan_scale: per-dimension``) at 1/9, 1/3, 1, 3 and 9 times the official ImageNet-64 balance
(36.9 generator / 122.9 discriminator per dimension), and no GAN, on the 8-Gaussian ring.

Per seed one recipe (one evaluator, one fixed validation draw): the one-step `dmd2` generator from
the seed's network teacher (100 epochs, reused from benchmarks/diffusion_dmd2.py's folder layout but
trained here), ``--iterations`` iterations of batch 512, TTUR 5, Adam 5e-4. The choice is the weight
with the lowest validation SWD at the end of training (the curve's last point, on the validation
split, never the test split); test-split figures are reported beside it for the record only.

Run (single-threaded):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_dmd2_gan_weight.py --seed 0   # then 1, 2
    python benchmarks/diffusion_dmd2_gan_weight.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import RESULTS, mean_std, write_results
from dm_common import MLP, RUNS, cell, network_teacher, run, summary_table

FOLDER = "diffusion_dmd2_gan_weight"
PARTIAL = RESULTS / "diffusion_dmd2_gan_weight.partial"
DATA = {"name": "toy2d", "distribution": "eight_gaussians", "batch_size": 512, "num_test": 10000}
BATCHES = 40
SCALES = {"x0": 0.0, "x1_9": 1 / 9, "x1_3": 1 / 3, "x1": 1.0, "x3": 3.0, "x9": 9.0}  # labels name files: x1_9 is 1/9


def one_seed(seed: int, iterations: int, lr: float) -> None:
    torch.set_num_threads(1)
    started = time.time()
    teacher = str(network_teacher(FOLDER, DATA, seed))
    methods = {label: {"name": "dmd2", "gan_scale": "per-dimension", "gan_weight_generator": 36.9 * scale,
                       "gan_weight_discriminator": 122.9 * scale} for label, scale in SCALES.items()}
    recipe = {"name": f"sweep-seed{seed}", "seed": seed, "data": DATA, "teacher": {**MLP, "checkpoint": teacher}, "student": MLP,
              "trainer": {"max_epochs": iterations // BATCHES, "progress_bar": False},
              "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
              "evaluation": {"num_samples": 5000, "teacher_steps": 64, "student_steps": [1], "curve_every": 200,
                             "curve_samples": 2000},
              "methods": methods}
    rows = run(recipe, FOLDER)
    for label in SCALES:
        curve = json.loads((RUNS / FOLDER / recipe["name"] / "logs" / label / "curve.json").read_text())
        rows[label]["val_swd"] = [p["value"] for p in curve if p.get("model") == "student"][-1]
    PARTIAL.mkdir(parents=True, exist_ok=True)
    (PARTIAL / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "iterations": iterations, "lr": lr, "rows": rows,
                                                          "seconds": round(time.time() - started)}, indent=2))


def summarise() -> None:
    seeds, s = summary_table(PARTIAL, ["val_swd", "swd", "high_quality", "coverage"])
    x = seeds[0]
    lines = ["# DMD2's GAN weight on validation (8-Gaussian ring, one step)", "",
             f"Mean ± std over seeds {[y['seed'] for y in seeds]}; {x['iterations']} iterations of batch 512 from the network teacher, "
             f"Adam {x['lr']}, TTUR 5; weight per dimension as a multiple of the ImageNet-64 balance (36.9 generator, 122.9 "
             "discriminator). Chosen on the validation SWD (2,000 samples, the curve's last point); test figures for the record. "
             "Produced by benchmarks/diffusion_dmd2_gan_weight.py.", "",
             "| GAN weight | validation swd | test swd | high quality | coverage |", "|---|---|---|---|---|"]
    for label in SCALES:
        lines.append(f"| {label} | " + " | ".join(cell(s, label, k) for k in ("val_swd", "swd@1", "high_quality@1", "coverage@1")) + " |")
    best = min(SCALES, key=lambda label: s[label]["val_swd"][0])
    wins = [min(SCALES, key=lambda label: y["rows"][label]["val_swd"]) for y in seeds]
    lines += ["", f"Chosen on validation: **{best}** (per seed: {', '.join(wins)}), i.e. generator "
              f"{36.9 * SCALES[best]:.1f}, discriminator {122.9 * SCALES[best]:.1f} per dimension."]
    write_results("diffusion_dmd2_gan_weight", {"seeds": [y["seed"] for y in seeds], "summary": s, "chosen": best, "per_seed": wins,
                                                "seconds_per_seed": mean_std([y["seconds"] for y in seeds])}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    summarise() if args.summarise else one_seed(args.seed, args.iterations, args.lr)


if __name__ == "__main__":
    main()
