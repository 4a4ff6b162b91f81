"""The classic-loss benchmark: every classifier KD loss and the scratch baseline, each tuned by
`anydistill tune` with the same number of validation trials, then trained with 3 other seeds and
scored once on the test split (mean ± std), with the teacher shared by all (trained once).

Tracks (recipes): MNIST-1D, a 1-D CNN teacher into an MLP or a GRU (`mnist1d/classic-losses[-gru]`: the losses
that apply to flat features); 8x8 digits, a CNN into a 4x narrower CNN (`digits/classic-losses`,
`digits/classic-losses-2`: conv-map losses too); `digits/fsp` and `digits/kdsvd`, whose losses
need equal widths; MNIST-5k, the pretrained ccexam teacher into a CNN or an MLP
(`mnist/classic-losses-5k[-mlp]`). `--name` names the results file (default `classic_losses`).

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses.py [--tracks mnist1d,digits] [--trials 6]
     -> results/classic_losses.{json,md}
     OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses.py --tracks digits-2,digits-fsp,digits-kdsvd --name classic_losses_2
     OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses.py --tracks mnist1d-gru --name classic_losses_gru
     OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses.py --tracks mnist-5k-mlp --name classic_losses_mnist5k_mlp
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
from common import mean_std, write_results
from tune_tabular import train_teacher

from anydistill.catalog import build_models
from anydistill.runner import build_teacher
from anydistill.study.tune import fit_method, load_method_recipe, tune

TRACKS = {  # name -> (recipe, student description)
    "mnist1d": ("mnist1d/classic-losses", "MNIST-1D: cnn1d teacher → MLP [256, 256]"),
    "digits": ("digits/classic-losses", "8x8 digits: small-cnn [16, 32] teacher → small-cnn [4, 8]"),
    "digits-2": ("digits/classic-losses-2", "8x8 digits, pre-activation and multi-stage losses: small-cnn [16, 32] → [4, 8]"),
    "digits-fsp": ("digits/fsp", "8x8 digits, equal widths for FSP: small-cnn [16, 32] h64 → [16, 32] h16"),
    "digits-kdsvd": ("digits/kdsvd", "8x8 digits, equal widths for KD-SVD: small-cnn [16, 32] h64 → [16, 32] h16"),
    "mnist1d-gru": ("mnist1d/classic-losses-gru", "MNIST-1D: cnn1d teacher → GRU (hidden 64, one layer)"),
    "mnist-5k": ("mnist/classic-losses-5k", "MNIST-5k (10 % of the training split): pretrained ccexam MNISTNet → small-cnn [4, 8]"),
    "mnist-5k-mlp": ("mnist/classic-losses-5k-mlp", "MNIST-5k: pretrained ccexam MNISTNet → MLP [256, 256]"),
}
RUNS = Path("runs")


def test_row(recipe_name: str, label: str, overrides: list[str]) -> dict:
    """Train ``label`` with ``overrides``; its evaluator row on the test split."""
    recipe, _ = load_method_recipe(recipe_name, label, overrides)
    datamodule = recipe.data.target(**recipe.data.kwargs)
    datamodule.setup()
    _, pretrained = build_models(recipe.data, recipe.student, recipe.teacher, datamodule)
    teacher = build_teacher(recipe, pretrained) if recipe.methods[label].target.needs_teacher else None
    method = fit_method(recipe, label, datamodule, teacher)
    evaluator = recipe.evaluation.target(data=datamodule, student_spec=recipe.resolved.get("student"), data_name=recipe.data.name,
                                         **recipe.evaluation.kwargs)
    assert evaluator.score_split == "test"
    return evaluator.evaluate(method.student, teacher, label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", default="mnist1d,digits")
    parser.add_argument("--trials", type=int, default=6, help="validation trials per method, baselines included")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated method labels (default: every method of the recipe)")
    parser.add_argument("--name", default="classic_losses", help="results/<name>.{json,md} and runs/<name>/")
    parser.add_argument("--space", action="append", default=[], help="a --space of `anydistill tune`, the same for every method")
    args = parser.parse_args()
    work = RUNS / args.name
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = list(range(1, args.seeds + 1))
    shutil.rmtree(work, ignore_errors=True)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses.py" + (
        "" if args.name == "classic_losses" else f" --tracks {args.tracks} --name {args.name}") + "".join(f" --space {x}" for x in args.space)
    payload = {"trials_per_method": args.trials, "seeds": seeds, "threads": torch.get_num_threads(), "command": command, "tracks": {}}
    for track in args.tracks.split(","):
        recipe_name, title = TRACKS[track]
        started = time.perf_counter()
        if "teacher" in _labels(recipe_name):  # trained once here, then shared through teacher.checkpoint
            weights, teacher_acc, teacher_s = train_teacher(recipe_name, [], [], work / track)
            common = [f"teacher.checkpoint={weights}"]
        else:  # a pretrained teacher
            teacher_acc, teacher_s, common = pretrained_teacher_accuracy(recipe_name), 0.0, []
        print(f"{track}: teacher test accuracy {teacher_acc:.4f} ({teacher_s:.0f} s)", flush=True)
        labels = [m for m in _labels(recipe_name) if m != "teacher"]
        if args.only:
            labels = [m for m in labels if m in args.only.split(",")]
        rows = {}
        for label in labels:
            t0 = time.perf_counter()
            result = tune(recipe_name, label, args.trials, overrides=common, spaces=args.space, runs=work / track, study_name=f"{track}-{label}",
                          storage=f"sqlite:///{work / 'tune.db'}", printer=lambda line: print("   ", line, flush=True))
            tests = [test_row(recipe_name, label, common + result.best_overrides + [f"seed={s}", f"data.seed={s}"]) for s in seeds]
            states = [t.state.name for t in result.study.trials]
            rows[label] = {"best_val_accuracy": result.best_value, "best_params": result.best_params,
                           "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                           "test_accuracy": [r["accuracy"] for r in tests],
                           "cka": [next((v for k, v in r.items() if k.startswith("cka/")), None) for r in tests],
                           "seconds": round(time.perf_counter() - t0, 1)}
            acc = mean_std(rows[label]["test_accuracy"])
            print(f"  {track} {label}: test {100 * acc[0]:.2f} ± {100 * acc[1]:.2f} (val {result.best_value:.4f})", flush=True)
        payload["tracks"][track] = {"title": title, "teacher_test_accuracy": teacher_acc, "methods": rows,
                                    "seconds": round(time.perf_counter() - started, 1)}
        write_results(args.name, payload, markdown(payload))  # after each track: a partial table survives
    print(markdown(payload))


def pretrained_teacher_accuracy(recipe_name: str) -> float:
    """Test accuracy of the recipe's pretrained teacher."""
    recipe, _ = load_method_recipe(recipe_name, "scratch")
    datamodule = recipe.data.target(**recipe.data.kwargs)
    datamodule.setup()
    _, pretrained = build_models(recipe.data, recipe.student, recipe.teacher, datamodule)
    teacher = build_teacher(recipe, pretrained)
    evaluator = recipe.evaluation.target(data=datamodule, student_spec=recipe.resolved.get("teacher"), data_name=recipe.data.name)
    return evaluator.evaluate(teacher.model, None, "teacher")["accuracy"]


def _labels(recipe_name: str) -> list[str]:
    from anydistill.catalog import load_recipe

    return list(load_recipe(recipe_name).methods)


def markdown(payload: dict) -> str:
    spaces = payload.get("command", "").split(" --space ")[1:]
    lines = ["# Classic classifier-KD losses, each tuned with the same number of validation trials", "",
             *([f"Search space changed for every method alike: {', '.join(spaces)}.", ""] if spaces else []),
             f"Every method (baselines included) got {payload['trials_per_method']} `anydistill tune` trials (TPE, median "
             "pruning; its paper's search space plus `optimizer.lr` and `optimizer.weight_decay`) on the validation split; "
             f"the best setting was then trained with seeds {payload['seeds']} and scored once on the test split. The teacher "
             "(pretrained, or trained once per track and passed as `teacher.checkpoint`) is shared by every method. A method "
             "ties scratch when the gap is within the "
             "larger of the two stds.", ""]
    for track, info in payload["tracks"].items():
        methods = info["methods"]
        scratch = mean_std(methods["scratch"]["test_accuracy"]) if "scratch" in methods else None
        lines += [f"## {info['title']}", "", f"Teacher: {100 * info['teacher_test_accuracy']:.2f} % test.", "",
                  "| rank | method | test accuracy (%) | vs scratch | best val (%) | CKA (penultimate) | trials complete / pruned / failed | best settings |",
                  "|---:|---|---:|---|---:|---:|---|---|"]
        ranked = sorted(methods.items(), key=lambda kv: -mean_std(kv[1]["test_accuracy"])[0])
        for rank, (label, row) in enumerate(ranked, 1):
            mean, std = mean_std(row["test_accuracy"])
            versus = "—"
            if scratch and label != "scratch":
                gap = mean - scratch[0]
                versus = "ties" if abs(gap) <= max(std, scratch[1]) else ("beats" if gap > 0 else "loses")
                versus += f" ({100 * gap:+.2f})"
            ckas = [c for c in row["cka"] if c is not None]
            cka = f"{mean_std(ckas)[0]:.3f}" if ckas else "—"
            settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["best_params"].items())
            lines.append(f"| {rank} | {label} | {100 * mean:.2f} ± {100 * std:.2f} | {versus} | {100 * row['best_val_accuracy']:.2f} "
                         f"| {cka} | {row['complete']} / {row['pruned']} / {row['failed']} | {settings} |")
        lines += ["", f"Time: {info['seconds']:.0f} s for this track ({payload['threads']} thread(s), 2 shared cores).", ""]
    lines += [f"Reproduce: `{payload.get('command', 'OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_losses.py')}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
