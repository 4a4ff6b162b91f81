"""Flash-DMD's joint reward tuning on the 8-Gaussian ring (4 steps): tuned jointly with distillation on
an exploitable proxy of a preference for modes 0 and 1, the generator raises the true preference
while keeping >= 0.9x the untuned student's high-quality fraction; tuned on the proxy alone it loses
>= 30% of it. Also: iterations until Flash-DMD reaches DMD2's final validation SWD.

Per seed: a rectified-flow MLP teacher (100 epochs, reused); in one recipe (one evaluator) the
untuned `dmd2` 4-step student, `flash-dmd` without reward, and `flash-dmd` with the proxy reward, all
from the teacher for ``--iterations``; then, in a second recipe, the untuned student tuned on the proxy
alone (`flash-dmd`, ``distill: false``, ``init_from`` its export) for ``--tune-iterations``. The true
preference (`ModePreference`) and the high-quality fraction are measured on 5,000 samples of each
export by this script.

Run (single-threaded):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_flash_dmd.py --seed 0   # then 1, 2
    python benchmarks/diffusion_flash_dmd.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import RESULTS, write_results
from dm_common import MLP, RUNS, cell, load_export, network_teacher, run, summary_table

FOLDER = "diffusion_flash_dmd"
PARTIAL = RESULTS / "diffusion_flash_dmd.partial"
TAG = ""  # --tag: a variant's run names and results files (e.g. _w1 for reward weight 1)
DATA = {"name": "toy2d", "distribution": "eight_gaussians", "batch_size": 512, "num_test": 5000}
BATCHES = 40
GAN = {"gan_scale": "per-dimension", "gan_weight_generator": 36.9, "gan_weight_discriminator": 122.9}
REWARD = {"reward": "proxy", "preferred_modes": [0, 1]}


def recipe(name: str, seed: int, teacher: str, epochs: int, lr: float, methods: dict) -> dict:
    return {"name": name, "seed": seed, "data": DATA, "teacher": {**MLP, "checkpoint": teacher}, "student": MLP,
            "trainer": {"max_epochs": epochs, "progress_bar": False}, "optimizer": {"name": "adam", "lr": lr, "schedule": "constant"},
            "evaluation": {"num_samples": 5000, "teacher_steps": 64, "student_steps": [4], "curve_every": 200, "curve_samples": 2000},
            "methods": methods}


@torch.no_grad()
def preference(run_name: str, label: str, seed: int) -> dict[str, float]:
    """The true preference and the high-quality fraction of 5,000 samples of an export."""
    from anydistill.data.toy2d_distributions import mode_std, modes
    from anydistill.diffusion.generate import generate
    from anydistill.diffusion.rewards import ModePreference
    from anydistill.diffusion.sample_metrics import mode_coverage

    model, _ = load_export(FOLDER, run_name, label)
    generator = torch.Generator().manual_seed(1000 + seed)
    z = torch.randn(5000, 2, generator=generator)
    x = generate(model, z, None, 4, generator=generator).x0
    centres, std = modes("eight_gaussians"), mode_std("eight_gaussians")
    return {"true_preference": float(ModePreference(centres, 3 * std, [0, 1])(x).mean()),
            "high_quality": mode_coverage(x, centres, std)[1]}


def one_seed(seed: int, iterations: int, tune_iterations: int, reward_weight: float, lr: float) -> None:
    torch.set_num_threads(1)
    started = time.time()
    teacher = str(network_teacher(FOLDER, DATA, seed))
    common = {"num_steps": 4, **GAN}
    joint = recipe(f"joint-seed{seed}{TAG}", seed, teacher, iterations // BATCHES, lr, {
        "untuned": {"name": "dmd2", **common},
        "flash": {"name": "flash-dmd", "adversarial_steps": 1, **common},
        "flash+reward": {"name": "flash-dmd", "adversarial_steps": 1, **common, **REWARD, "reward_weight": reward_weight}})
    rows = run(joint, FOLDER)
    untuned = RUNS / FOLDER / joint["name"] / "checkpoints" / "untuned" / "model.safetensors"
    alone = recipe(f"reward-only-seed{seed}{TAG}", seed, teacher, tune_iterations // BATCHES, lr, {
        "reward-only": {"name": "flash-dmd", "adversarial_steps": 0, "distill": False, "init_from": str(untuned), **common, **REWARD,
                        "reward_weight": reward_weight}})
    rows.update({k: v for k, v in run(alone, FOLDER).items() if k != "teacher"})
    measured = {label: preference(name, label, seed) for name, labels in ((joint["name"], ("untuned", "flash", "flash+reward")),
                                                                         (alone["name"], ("reward-only",))) for label in labels}
    for label, values in measured.items():
        rows[label].update(values)
    curves = {label: json.loads((RUNS / FOLDER / joint["name"] / "logs" / label / "curve.json").read_text()) for label in ("untuned", "flash")}
    partial().mkdir(parents=True, exist_ok=True)
    (partial() / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "iterations": iterations, "tune_iterations": tune_iterations,
                                                          "reward_weight": reward_weight, "lr": lr, "rows": rows, "curves": curves,
                                                          "seconds": round(time.time() - started)}, indent=2))


def supplement(seed: int, reward_weight: float, lr: float) -> None:
    """Adds to a finished seed the joint reward tuning without the timestep-aware split (``dmd2+reward``:
    `flash-dmd` with no adversarial step and DMD2's TTUR 5, i.e. DMD2 tuned jointly), and scores every
    arm's true preference again (in float64, so a run-off generator gets a number)."""
    torch.set_num_threads(1)
    path = partial() / f"seed{seed}.json"
    record = json.loads(path.read_text())
    teacher = str(network_teacher(FOLDER, DATA, seed))
    extra = recipe(f"dm-reward-seed{seed}{TAG}", seed, teacher, record["iterations"] // BATCHES, lr, {
        "dmd2+reward": {"name": "flash-dmd", "num_steps": 4, "adversarial_steps": 0, "update_ratio": 5, **GAN, **REWARD,
                        "reward_weight": reward_weight}})
    record["rows"].update({k: v for k, v in run(extra, FOLDER).items() if k != "teacher"})
    runs = {"untuned": f"joint-seed{seed}{TAG}", "flash": f"joint-seed{seed}{TAG}", "flash+reward": f"joint-seed{seed}{TAG}",
            "reward-only": f"reward-only-seed{seed}{TAG}", "dmd2+reward": extra["name"]}
    for label, name in runs.items():
        record["rows"][label].update(preference(name, label, seed))
    path.write_text(json.dumps(record, indent=2))


def reach(curve: list[dict], level: float) -> int | None:
    """The first iteration after the start whose validation value is <= ``level`` (the starting point is
    the teacher's own few-step sampler, which can already be below it)."""
    return next((p["iteration"] for p in curve if p.get("model") == "student" and p["iteration"] > 0 and p["value"] <= level), None)


def partial() -> Path:
    return PARTIAL.with_name(f"diffusion_flash_dmd{TAG}.partial")


def summarise() -> None:
    seeds, s = summary_table(partial(), ["swd", "true_preference", "high_quality", "coverage"])
    x = seeds[0]
    lines = ["# Flash-DMD's joint reward tuning on the 8-Gaussian ring (4 steps)", "",
             f"Seeds {[y['seed'] for y in seeds]}; {x['iterations']} iterations from the teacher (batch 512, Adam {x['lr']}, GAN per "
             f"dimension 36.9 / 122.9; dmd2 TTUR 5, flash-dmd TTUR 2, DM on 3 steps and the GAN alone on the last); reward: a proxy "
             f"MLP of the preference for modes 0 and 1 fitted on the data, weight {x['reward_weight']}; reward-only tuning: "
             f"{x['tune_iterations']} iterations from the untuned student. Produced by benchmarks/diffusion_flash_dmd.py.", "",
             "| model | swd | true preference | high quality | coverage |", "|---|---|---|---|---|"]
    for label in ("untuned", "flash", "flash+reward", "dmd2+reward", "reward-only"):
        lines.append(f"| {label} | " + " | ".join(cell(s, label, k) for k in ("swd@4", "true_preference", "high_quality", "coverage@4")) + " |")
    m = lambda label, key: s.get(label, {}).get(key, (float("nan"), 0.0))[0]  # noqa: E731
    joint_ok = m("flash+reward", "true_preference") > m("untuned", "true_preference") and \
        m("flash+reward", "high_quality") >= 0.9 * m("untuned", "high_quality")
    alone_loses = m("reward-only", "high_quality") <= 0.7 * m("untuned", "high_quality")
    reached = [reach(y["curves"]["flash"], y["curves"]["untuned"][-1]["value"]) for y in seeds]
    verdict = lambda ok: "**holds**" if ok else "**does not hold**"  # noqa: E731
    lines += ["", "Claims:",
              f"- Joint tuning raises the true preference ({m('flash+reward', 'true_preference'):.3f} vs {m('untuned', 'true_preference'):.3f}) "
              f"keeping >= 0.9x the untuned high-quality fraction ({m('flash+reward', 'high_quality'):.3f} vs {m('untuned', 'high_quality'):.3f}): "
              f"{verdict(joint_ok)}.",
              f"- Reward-only tuning loses >= 30% of it ({m('reward-only', 'high_quality'):.3f}): {verdict(alone_loses)}.",
              f"- Joint tuning on DMD2 without the timestep-aware split (dmd2+reward): true preference "
              f"{m('dmd2+reward', 'true_preference'):.3f}, high quality {m('dmd2+reward', 'high_quality'):.3f}: "
              f"{verdict(m('dmd2+reward', 'true_preference') > m('untuned', 'true_preference') and m('dmd2+reward', 'high_quality') >= 0.9 * m('untuned', 'high_quality'))}"
              " by the same criterion.",
              "- Iterations until flash-dmd's validation swd reaches dmd2's final value, per seed: "
              + ", ".join("—" if r is None else str(r) for r in reached) + f" (of {x['iterations']})."]
    write_results(f"diffusion_flash_dmd{TAG}", {"seeds": [y["seed"] for y in seeds], "summary": s, "iterations_to_dmd2_final": reached,
                                          "seconds_per_seed": [y["seconds"] for y in seeds]}, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--tune-iterations", type=int, default=1000)
    parser.add_argument("--reward-weight", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--summarise", action="store_true")
    parser.add_argument("--supplement", action="store_true", help="add the dmd2+reward arm to a finished seed and rescore")
    parser.add_argument("--tag", default="", help="suffix of a variant's run names and results files")
    args = parser.parse_args()
    global TAG
    TAG = args.tag
    if args.summarise:
        summarise()
    elif args.supplement:
        supplement(args.seed, args.reward_weight, args.lr)
    else:
        one_seed(args.seed, args.iterations, args.tune_iterations, args.reward_weight, args.lr)


if __name__ == "__main__":
    main()
