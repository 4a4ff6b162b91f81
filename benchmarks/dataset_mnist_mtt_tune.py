"""MTT's settings on MNIST, chosen on the VALIDATION split (IPC 1 and 10, seed 0).

At the CPU budget (100 of the paper's 5,000 iterations, 10 unrolled steps against 2 expert epochs
of ~196 SGD steps each) MTT's learned alpha was still climbing from 0.01 to 0.03 when the run
ended and the set scored below a random subset. A larger alpha_0 (`syn_lr_init`, the official
`distill.py --lr_teacher`) lets the 10 student steps cover the experts' 392 earlier: 0.01 x 392 /
10 = 0.39 matches the step counts. The candidates are scored on MNIST's 10,000 validation images.

Run: OMP_NUM_THREADS=1 python benchmarks/dataset_mnist_mtt_tune.py [STAGE ...]   (IPC 1 about 20 minutes on one
core, each IPC-10 stage about 30), then --report to write the results.
"""

from __future__ import annotations

import sys

from common import mean_std, write_results
from dataset_digits_tune import RUNS, run_stage

# Each stage: (IPC, candidates, run-wide overrides). The second stage was added after the first: a
# larger alpha_0 scored worse (the learned alpha fell back towards 0.025), and with the expert buffer
# cached an MTT iteration costs ~0.3 s here, so the shipped alpha_0 with 10x the iterations became
# affordable. The IPC-10 stages came after the test run of the IPC-1 choice at IPC 10 (91.4 %, below
# random): its trajectory loss rose from 0.88 to 1.03 over 300 iterations while the pixels gathered
# noise (pixel step lr_images = 100), and the evaluator trained with the learned alpha (0.062, 6x the
# protocol's 0.01). The candidates take 10x smaller pixel steps, with alpha learned or held at 0.01.
# The IPC-1 stages ran with the recipe's MTT settings of the time (pixel step 100, alpha learned),
# pinned here since the recipe now ships the IPC-10 choice.
FIRST = {"lr_images": 100.0}
STAGES = {
    "mnist-dd-ipc1-mtt-tune-val": (1, {f"mtt@alpha{alpha}": ("mtt", {"iterations_per_epoch": 100, "syn_lr_init": alpha, **FIRST})
                                       for alpha in (0.1, 0.4)}, ("student.learn_lr=true",)),
    "mnist-dd-ipc1-mtt-tune-val-2": (1, {
        "mtt@alpha0.01": ("mtt", {"iterations_per_epoch": 100, "syn_lr_init": 0.01, **FIRST}),
        "mtt@alpha0.01-1000it": ("mtt", {"iterations_per_epoch": 1000, "syn_lr_init": 0.01, **FIRST}),
    }, ("student.learn_lr=true",)),
    "mnist-dd-ipc10-mtt-tune-val": (10, {
        "mtt-ipc10@lr_images10": ("mtt", {"iterations_per_epoch": 300, "syn_lr_init": 0.01, "lr_images": 10.0}),
    }, ()),
    "mnist-dd-ipc10-mtt-tune-val-fixed-alpha": (10, {
        "mtt-ipc10@lr_images10-fixed-alpha": ("mtt", {"iterations_per_epoch": 300, "syn_lr_init": 0.01, "lr_images": 10.0}),
    }, ("student.learn_lr=false",)),
}
CANDIDATES = {label: (method, params, sets) for _, stage, sets in STAGES.values() for label, (method, params) in stage.items()}
IPC = {label: ipc for ipc, stage, _ in STAGES.values() for label in stage}


def main() -> None:
    """Run the stages given on the command line by name (all by default; two may run side by side)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("stages", nargs="*", default=list(STAGES))
    parser.add_argument("--report", action="store_true", help="summarise the finished stages only")
    args = parser.parse_args()
    metrics: dict = {}
    for name in STAGES if args.report else args.stages:
        ipc, candidates, sets = STAGES[name]
        if args.report and not (RUNS / name / "metrics.json").exists():
            continue
        first_of_ipc = name == next(n for n, (i, _, _) in STAGES.items() if i == ipc)
        found = run_stage(name, candidates, ["random"] if first_of_ipc else [], recipe_name="mnist/dataset-distillation",
                          ipc=ipc, max_epochs=1, evaluation={"random_subsets": 2}, sets=sets)
        if "random" in found:
            found[f"random (IPC {ipc})"] = found.pop("random")
        metrics.update(found)
    if args.report:
        report(metrics)


def report(metrics: dict) -> None:
    rows, lines = {}, ["# MNIST: MTT's alpha_0, budget and pixel step chosen on the validation split", "",
                       "Scored on the 10,000 validation images, distillation seed 0, 2 evaluation models each (random: 2 subsets "
                       "x 2 models); the recipe `mnist/dataset-distillation` otherwise. Produced by "
                       "benchmarks/dataset_mnist_mtt_tune.py.", ""]
    for ipc in (1, 10):
        labels = [f"random (IPC {ipc})", *(label for label in CANDIDATES if IPC[label] == ipc)]
        lines += [f"## IPC {ipc}", "", "| set | validation accuracy (%) | learned alpha | distill time (s) |", "|---|---|---|---|"]
        for label in (label for label in labels if label in metrics):
            accs = [100 * a for a in metrics[label]["accuracies"]]
            mean, std = mean_std(accs)
            rows[label] = {"mean": mean, "std": std, "eval_lr": metrics[label].get("eval_lr"),
                           "train_time_s": metrics[label].get("train_time_s"), "ipc": ipc}
            learned = label in CANDIDATES and "student.learn_lr=false" not in CANDIDATES[label][2]
            alpha = f"{rows[label]['eval_lr']:.4f}" if rows[label]["eval_lr"] and learned else "—"
            lines.append(f"| {label} | {mean:.2f} ± {std:.2f} | {alpha} | {rows[label]['train_time_s'] or '—'} |")
        tried = [label for label in labels[1:] if label in rows]
        if tried:
            rows[f"chosen_ipc{ipc}"] = max(tried, key=lambda label: rows[label]["mean"])
            lines.append(f"\nChosen at IPC {ipc}: `{rows[f'chosen_ipc{ipc}']}`.\n")
    write_results("dataset_mnist_mtt_tune", rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
