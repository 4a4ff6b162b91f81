"""DMD2's claims re-measured on the 8-Gaussian ring at a larger budget (issue 20, item 1).

Per seed, three recipes, each scored by one evaluator (5,000 samples, the 10,000-point test split):

* **network teacher** (a rectified-flow MLP, 100 epochs): ``ttur5`` (5 critic updates per
  generator update) and ``ttur1`` (1:1, run for the same number of generator updates), and the
  4-step generators trained on their own backward simulation (``bs@4``) or on noised data
  (``nd@4``). For both 4-step generators the script also measures the sliced W2 between the
  training inputs at each step's time (noised data for ``nd@4``) and what the sampler feeds
  that step (the generator's own previous steps).
* **exact teacher** (`analytic-mixture`): ``analytic``, the 1-step generator started from the same
  network (`init_from`): item (a), the method's error without any teacher error.
* **flawed teacher** (trained 10 epochs): ``gan`` and ``no-gan``: does the GAN term on real data
  beat the teacher it distils?

GAN terms use ``gan_scale: per-dimension`` at the official ImageNet-64 balance (3e-3 x 12,288 =
36.9 per dimension for the generator, 1e-2 x 12,288 = 122.9 for the discriminator; transferred,
not tuned); fake score DMD2's defaults here (uniform t, unweighted).

``--from-sweep`` re-measures every claim at the GAN weight chosen on validation by
benchmarks/diffusion_dmd2_gan_weight.py (results ``*_chosen``): that weight for every arm, and for the
flawed-teacher ``gan`` arm, which needs a GAN, the best non-zero weight of the sweep.

Run (single-threaded; ``--iterations`` of batch 512):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_dmd2.py --seed 0   # then 1, 2
    python benchmarks/diffusion_dmd2.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from safetensors.torch import load_file

from common import RESULTS, write_results
from dm_common import MLP, RUNS, cell, network_teacher, run, summary_table

FOLDER = "diffusion_dmd2"
PARTIAL = RESULTS / "diffusion_dmd2.partial"
DATA = {"name": "toy2d", "distribution": "eight_gaussians", "batch_size": 512, "num_test": 10000}
BATCHES = 40
GAN = {"gan_scale": "per-dimension", "gan_weight_generator": 36.9, "gan_weight_discriminator": 122.9}
NO_GAN = {"gan_weight_generator": 0.0, "gan_weight_discriminator": 0.0}


def gan(multiplier: float) -> dict:
    """The GAN options at ``multiplier`` x the ImageNet-64 balance per dimension (0: no GAN)."""
    if multiplier == 0:
        return NO_GAN
    return {"gan_scale": "per-dimension", "gan_weight_generator": 36.9 * multiplier, "gan_weight_discriminator": 122.9 * multiplier}


def from_sweep() -> tuple[float, float]:
    """``(chosen multiplier, best non-zero multiplier)`` by mean validation swd in the sweep's results."""
    from diffusion_dmd2_gan_weight import SCALES

    summary = json.loads((RESULTS / "diffusion_dmd2_gan_weight.json").read_text())["summary"]
    ranked = sorted(SCALES, key=lambda label: summary[label]["val_swd"][0])
    return SCALES[ranked[0]], SCALES[next(label for label in ranked if SCALES[label] > 0)]


def recipe(name: str, seed: int, teacher: dict, epochs: int, lr: float, methods: dict) -> dict:
    return {"name": name, "seed": seed, "data": DATA, "teacher": teacher, "student": MLP,
            "trainer": {"max_epochs": epochs, "progress_bar": False}, "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
            "evaluation": {"num_samples": 5000, "teacher_steps": 64, "student_steps": [1], "curve_every": 200, "curve_samples": 2000},
            "methods": methods}


@torch.no_grad()
def input_gaps(run_name: str, label: str, seed: int) -> list[float]:
    """Sliced W2 at each step k >= 1 of a 4-step generator between noised data at its time and the
    sampler's state there (the generator's own first k steps from noise)."""
    from anydistill.catalog import load_recipe
    from anydistill.diffusion.common import schedule_of
    from anydistill.diffusion.generate import generate
    from anydistill.diffusion.sample_metrics import sliced_wasserstein
    from anydistill.models.flow_denoisers import mlp_flow_denoiser

    folder = RUNS / FOLDER / run_name / "checkpoints" / label
    spec = json.loads((folder / "model.json").read_text())
    model = mlp_flow_denoiser((2,), 0, **{k: MLP[k] for k in ("schedule", "prediction", "hidden", "depth")})
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.sampling = spec["sampling"]
    data = load_recipe(str(RUNS / FOLDER / f"{run_name}.yaml")).data
    module = data.target(**data.kwargs)
    module.setup()
    real = module.split("val")[0]
    generator = torch.Generator().manual_seed(seed)
    schedule = schedule_of(model)
    z = torch.randn(real.shape, generator=generator) * schedule.noise_std
    states = generate(model, z, None, 4, generator=generator, return_trajectory=True).trajectory
    times = spec["sampling"]["timesteps"]["4"]
    gaps = []
    for k in range(1, 4):
        t = torch.full((real.shape[0],), float(times[k]))
        noised = schedule.add_noise(real, torch.randn(real.shape, generator=generator) * schedule.noise_std, t)
        gaps.append(sliced_wasserstein(states[k], noised, 256, torch.Generator().manual_seed(0)))
    return gaps


def one_seed(seed: int, iterations: int, lr: float, multiplier: float = 1.0, flawed_multiplier: float = 1.0, tag: str = "") -> None:
    torch.set_num_threads(1)
    started = time.time()
    epochs = iterations // BATCHES
    good = network_teacher(FOLDER, DATA, seed)
    flawed = network_teacher(FOLDER, DATA, seed, epochs=10)
    rows, gaps = {}, {}
    arm_gan = gan(multiplier)
    network = recipe(f"network-seed{seed}{tag}", seed, {**MLP, "checkpoint": str(good)}, epochs, lr, {
        "ttur5": {"name": "dmd2", "update_ratio": 5, **arm_gan},
        "ttur1": {"name": "dmd2", "update_ratio": 1, **arm_gan, "max_epochs": max(1, epochs // 5)},
        "bs@4": {"name": "dmd2", "update_ratio": 5, "num_steps": 4, "student_inputs": "backward-simulation", **arm_gan},
        "nd@4": {"name": "dmd2", "update_ratio": 5, "num_steps": 4, "student_inputs": "noised-data", **arm_gan}})
    rows.update({f"network/{k}": v for k, v in run(network, FOLDER).items()})
    gaps = {label: input_gaps(network["name"], label, seed) for label in ("bs@4", "nd@4")}
    exact = recipe(f"exact-seed{seed}{tag}", seed, {"name": "analytic-mixture", "distribution": "eight_gaussians", "schedule": "rectified-flow"},
                   epochs, lr, {"analytic": {"name": "dmd2", "update_ratio": 5, "init_from": str(good), **arm_gan}})
    rows.update({f"exact/{k}": v for k, v in run(exact, FOLDER).items()})
    under = recipe(f"flawed-seed{seed}{tag}", seed, {**MLP, "checkpoint": str(flawed)}, epochs, lr, {
        "gan": {"name": "dmd2", "update_ratio": 5, **gan(flawed_multiplier)}, "no-gan": {"name": "dmd2", "update_ratio": 5, **NO_GAN}})
    rows.update({f"flawed/{k}": v for k, v in run(under, FOLDER).items()})
    curves = {f"{prefix}/{label}": json.loads((RUNS / FOLDER / f"{prefix}-seed{seed}{tag}" / "logs" / label / "curve.json").read_text())
              for prefix, labels in (("network", ("ttur5", "ttur1")),) for label in labels}
    partial = PARTIAL.with_name(f"diffusion_dmd2{tag}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    (partial / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "iterations": iterations, "lr": lr, "gan_multiplier": multiplier,
                                                          "flawed_gan_multiplier": flawed_multiplier, "rows": rows, "gaps": gaps,
                                                          "curves": curves, "seconds": round(time.time() - started)}, indent=2))


def spread(curve: list[dict]) -> float:
    """Max minus min of the student's validation swd over the last 20% of its curve."""
    points = [p for p in curve if p.get("model", "student") == "student"]
    tail = [p["value"] for p in points if p["iteration"] >= 0.8 * points[-1]["iteration"]]
    return max(tail) - min(tail)


def summarise(tag: str = "") -> None:
    from common import mean_std

    seeds, s = summary_table(PARTIAL.with_name(f"diffusion_dmd2{tag}.partial"), ["swd", "mmd", "coverage", "high_quality"])
    n = seeds[0]["iterations"]
    weight, flawed_weight = seeds[0].get("gan_multiplier", 1.0), seeds[0].get("flawed_gan_multiplier", 1.0)
    lines = ["# DMD2's claims on the 8-Gaussian ring", "",
             f"Mean ± std over seeds {[x['seed'] for x in seeds]}; {n} iterations of batch 512 (`ttur1`: {n // 5}, the same generator "
             f"updates), Adam lr {seeds[0]['lr']}; GAN per dimension at {weight:.3g}x the official ImageNet-64 balance (36.9 / 122.9; "
             f"the flawed-teacher `gan` arm at {flawed_weight:.3g}x). 5,000 samples "
             "against the 10,000-point test split. Produced by benchmarks/diffusion_dmd2.py.", "",
             "| teacher / arm | NFE | swd | mmd | coverage | high quality |", "|---|---|---|---|---|---|"]
    for label in s:
        nfes = sorted({int(k.split("@")[1]) for k in s[label] if k.startswith("swd@")})
        for nfe in nfes:
            lines.append(f"| {label} | {nfe} | " + " | ".join(cell(s, label, f"{k}@{nfe}") for k in ("swd", "mmd", "coverage", "high_quality")) + " |")
    m = lambda label, key: s.get(label, {}).get(key, (float("nan"), 0.0))  # noqa: E731
    spreads = {arm: mean_std([spread(x["curves"][f"network/{arm}"]) for x in seeds]) for arm in ("ttur5", "ttur1")}
    gaps = {arm: [mean_std([x["gaps"][arm][k] for x in seeds]) for k in range(3)] for arm in ("bs@4", "nd@4")}
    verdict = lambda ok: "**holds**" if ok else "**does not hold**"  # noqa: E731
    t5, t1 = m("network/ttur5", "swd@1"), m("network/ttur1", "swd@1")
    wide = spreads["ttur1"][0] > 0 and spreads["ttur1"][0] >= 2 * spreads["ttur5"][0]
    with_gan, nogan, flawed = m("flawed/gan", "high_quality@1"), m("flawed/no-gan", "high_quality@1"), m("flawed/teacher", "high_quality@64")
    bs, nd = m("network/bs@4", "swd@4"), m("network/nd@4", "swd@4")
    exact = m("exact/analytic", "high_quality@1")
    lines += ["", "Claims:",
              f"- (a) With the exact real score the 1-step generator reaches a high-quality fraction >= 0.9: {exact[0]:.3f} ± {exact[1]:.3f}: "
              f"{verdict(exact[0] >= 0.9)}.",
              f"- TTUR 5:1 vs 1:1 at equal generator updates: final swd {t5[0]:.4f} vs {t1[0]:.4f} (<= 0.9x: {t5[0] <= 0.9 * t1[0]}); "
              f"spread of the validation curve over the last 20%: {spreads['ttur5'][0]:.4f} vs {spreads['ttur1'][0]:.4f} "
              f"(1:1 >= 2x: {wide}): {verdict(t5[0] <= 0.9 * t1[0] or wide)}.",
              f"- GAN on real data with a flawed teacher (10 epochs): high-quality fraction {with_gan[0]:.3f} vs the teacher's {flawed[0]:.3f} "
              f"at 64 steps and {nogan[0]:.3f} without the GAN: {verdict(with_gan[0] > flawed[0] and with_gan[0] > nogan[0])}.",
              f"- 4-step backward simulation vs noised data: swd {bs[0]:.4f} vs {nd[0]:.4f}: {verdict(bs[0] < nd[0])}. Sliced W2 between "
              "the training inputs of noised data and the sampler's inputs at steps 1-3: "
              + ", ".join(f"{g[0]:.3f}" for g in gaps["nd@4"]) + " (the nd@4 generator); the same distance for bs@4's sampler: "
              + ", ".join(f"{g[0]:.3f}" for g in gaps["bs@4"]) + " (backward simulation trains on its sampler's inputs by construction)."]
    write_results(f"diffusion_dmd2{tag}", {"seeds": [x["seed"] for x in seeds], "summary": s, "curve_spread": spreads, "input_gaps": gaps,
                                     "seconds_per_seed": [x["seconds"] for x in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--from-sweep", action="store_true", help="the GAN weights chosen on validation (results *_chosen)")
    parser.add_argument("--summarise", action="store_true")
    args = parser.parse_args()
    tag = "_chosen" if args.from_sweep else ""
    if args.summarise:
        summarise(tag)
    else:
        weights = from_sweep() if args.from_sweep else (1.0, 1.0)
        one_seed(args.seed, args.iterations, args.lr, *weights, tag)


if __name__ == "__main__":
    main()
