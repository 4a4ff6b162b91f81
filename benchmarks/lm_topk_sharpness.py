"""How KL(full || reconstructed) of the top-k + tail cache depends on the teacher's sharpness.

The tail bucket spreads the mass outside the top-k uniformly, so what it loses is
``r * KL(true tail shape || uniform)``: it shrinks with the tail mass ``r``, i.e. with how sure
the teacher is. The benchmark teacher of the other LM benchmarks is trained for 1,200 steps (a
CPU budget); this script trains the same architecture longer and measures the cache at
k in {8, 32, 48} for each, next to the teacher's held-out NLL and entropy.

Run: OMP_NUM_THREADS=1 python benchmarks/lm_topk_sharpness.py   (about 25 minutes the first time: the 4,000-step teacher)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import lm_common as c
from anydistill.lm.common import teacher_logits
from anydistill.lm.evaluate import held_out_nll
from lm_topk import VOCAB, held_out_reconstruction

STEPS = (1200, 4000)
KS = (8, 32, 48)


@torch.no_grad()
def entropy(teacher, datamodule) -> float:
    """Mean entropy (nats) of the teacher's next-token distribution on the test completion positions."""
    ids, mask = datamodule.split("test")
    logits = torch.cat([teacher_logits(teacher, ids[i : i + 64], torch.ones_like(ids[i : i + 64]), VOCAB)
                        for i in range(0, ids.shape[0], 64)])[mask[:, 1:]]
    log_p = F.log_softmax(logits.float(), dim=-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def main() -> None:
    datamodule = c.data()
    rows = []
    for steps in STEPS:
        teacher = c.teacher(steps)
        ids, mask = datamodule.split("test")
        nll, _ = held_out_nll(teacher.model, ids, mask)
        row = {"teacher_steps": steps, "test_nll": nll, "entropy": entropy(teacher, datamodule),
               "reconstruction": held_out_reconstruction(teacher, datamodule, ks=KS, tails=(True,))}
        rows.append(row)
        print(row, flush=True)
    header = " | ".join(f"KL at k={k}" for k in KS)
    lines = ["# Top-k + tail cache fidelity against the teacher's sharpness (Shakespeare char, V = 96)", "",
             "Teacher GPT-2 4L d128 (as in the other LM benchmarks) trained for more steps; fp16 log-probabilities, int32 "
             "ids, fp16 tail (k=32: 194 bytes/token). KL(full ‖ reconstructed) in nats per token, mean over the completion "
             "positions of the held-out test plays. Produced by benchmarks/lm_topk_sharpness.py.", "",
             f"| teacher steps | test NLL | entropy | {header} |", "|---:|---:|---:|" + "---:|" * len(KS)]
    for row in rows:
        kls = " | ".join(f"{r['kl_full_reconstructed']:.2e}" for r in row["reconstruction"])
        lines.append(f"| {row['teacher_steps']} | {row['test_nll']:.4f} | {row['entropy']:.4f} | {kls} |")
    c.write_results("lm_topk_sharpness", {"rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
