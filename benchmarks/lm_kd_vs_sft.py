"""Benchmark (a): token-level KD against SFT at equal steps, held-out NLL over 3 seeds.

Run: OMP_NUM_THREADS=1 python benchmarks/lm_kd_vs_sft.py   (about 5 minutes after the teacher exists)
"""

from __future__ import annotations

import time

import lm_common as c
from anydistill.lm.methods.kd import LMKD
from anydistill.lm.methods.sft import LMSFT

SEEDS, STEPS = (0, 1, 2), 300
METHODS = {
    "lm-sft": lambda s, t: LMSFT(s, None, c.OPTIMIZER),
    "lm-kd fkl, alpha=0.5": lambda s, t: LMKD(s, t, c.OPTIMIZER, divergence="fkl", alpha=0.5),
    "lm-kd fkl, alpha=1": lambda s, t: LMKD(s, t, c.OPTIMIZER, divergence="fkl", alpha=1.0),
}


def main() -> None:
    teacher, datamodule = c.teacher(), c.data()
    results = {label: {"nll": [], "kl_teacher": [], "seconds": []} for label in METHODS}
    for seed in SEEDS:
        for label, build in METHODS.items():
            method = build(c.student(seed), teacher)
            seconds = c.fit(method, datamodule, STEPS)
            scores = c.scores(method.student, teacher.model, datamodule)
            for key, value in {**scores, "seconds": seconds}.items():
                results[label][key].append(value)
            print(seed, label, scores, f"{seconds:.1f}s", flush=True)
    teacher_scores = c.scores(teacher.model, teacher.model, datamodule)
    lines = [
        "# KD vs SFT at equal steps (Shakespeare, held-out plays)",
        "",
        f"Teacher GPT-2 4L d128 ({c.TEACHER_STEPS} steps of CE): test NLL {teacher_scores['nll']:.4f} nats/char. "
        f"Student GPT-2 1L d64, {STEPS} steps of batch 32 x 64 chars, AdamW lr 3e-3 cosine; seeds {list(SEEDS)}; "
        "mean ± std. NLL and KL(teacher || student) in nats per character on 256 test blocks; seconds = training wall time, 1 thread.",
        "",
        "| method | test NLL | KL(teacher‖student) | train seconds |",
        "|---|---:|---:|---:|",
        *[c.row(label, values) for label, values in results.items()],
        "",
    ]
    c.write_results("lm_kd_vs_sft", {"steps": STEPS, "seeds": list(SEEDS), "teacher": teacher_scores, "results": results},
                    "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    began = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - began:.0f} s")
