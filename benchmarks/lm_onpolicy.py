"""Benchmark (c): GKD's on-policy fraction lambda in {0, 0.5, 1} (JSD beta = 0.5), against SFT, at
equal steps over 3 seeds. Generation cost is counted in the wall time.

Run: OMP_NUM_THREADS=1 python benchmarks/lm_onpolicy.py   (about 8 minutes after the teacher exists)
"""

from __future__ import annotations

import time

import lm_common as c
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.sft import LMSFT

SEEDS, STEPS = (0, 1, 2), 150
METHODS = {
    "lm-sft": lambda s, t: LMSFT(s, None, c.OPTIMIZER),
    "gkd lambda=0": lambda s, t: GKD(s, t, c.OPTIMIZER, lmbda=0.0, beta=0.5),
    "gkd lambda=0.5": lambda s, t: GKD(s, t, c.OPTIMIZER, lmbda=0.5, beta=0.5),
    "gkd lambda=1": lambda s, t: GKD(s, t, c.OPTIMIZER, lmbda=1.0, beta=0.5),
}


def main() -> None:
    teacher, datamodule = c.teacher(), c.data()
    keys = c.SAMPLE_KEYS
    results = c.seeded_runs(METHODS, teacher, datamodule, SEEDS, STEPS)
    lines = [
        "# GKD: on-policy fraction lambda (Shakespeare, held-out plays)",
        "",
        f"Same teacher and student as lm_kd_vs_sft.md; {STEPS} steps of batch 32; prompts are the first 16 characters "
        "of each 64-character block and the student generates the other 48 with its KV cache (T = 0.9, top_k 0, top_p 1) "
        f"when a batch is on-policy (probability lambda); JSD beta = 0.5 at T = 1; seeds {list(SEEDS)}; mean ± std. "
        "'teacher NLL of samples': the teacher's NLL per character of the student's own samples (T = 1) after test prompts.",
        "",
        "| method | test NLL | KL(teacher‖student) | teacher NLL of samples | train seconds |",
        "|---|---:|---:|---:|---:|",
        *[c.row(label, values, keys) for label, values in results.items()],
        "",
    ]
    c.write_results("lm_onpolicy", {"steps": STEPS, "seeds": list(SEEDS), "results": results}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    began = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - began:.0f} s")
