"""Adaptive-k teacher cache against fixed top-k: bytes per token and KL(full || reconstructed).

No training: the benchmark teacher of the other LM benchmarks (lm_common.teacher) over the
completion positions of the held-out test plays. For each budget eps the adaptive signal keeps,
per position, the fewest fp16 top entries (k in [1, V]) whose reconstruction meets KL <= eps;
it is set against fixed k in {8, 16, 32, 48, 64} (fp16 values, int32 ids as the fixed cache
stores them, fp16 tail), against the smallest fixed k whose *worst* position meets the same eps
(what a fixed cache needs for the same guarantee) and the smallest whose *mean* KL is as low.
Every KL is that of the fp16 reconstruction the losses train on, in float64.

Run: OMP_NUM_THREADS=1 python benchmarks/lm_adaptive_cache.py   (about 15 s once the teacher exists;
the first run trains it first, 1,200 steps, several minutes on one thread)
"""

from __future__ import annotations

import time

import torch

import lm_common as c
from anydistill.lm.adaptive_topk import adaptive_sparsify, ragged_bytes_per_token
from anydistill.lm.common import teacher_logits
from anydistill.lm.topk import densify_rows, sparsify
from anydistill.lm.signal_store import split_attention_mask

VOCAB = 96
BUDGETS = (1e-2, 1e-3, 1e-4)
FIXED_KS = (8, 16, 32, 48, 64)


def kl(logits: torch.Tensor, sparse) -> torch.Tensor:
    """KL(softmax(logits) || fp16 reconstruction) per position, float64."""
    log_p = torch.log_softmax(logits.double(), -1)
    log_q = densify_rows(sparse.logprobs, sparse.indices, sparse.tail_logprob, VOCAB).double()
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def held_out_logits(teacher, datamodule) -> torch.Tensor:
    """The teacher's logits [P, V] at the completion positions of the test plays."""
    ids, mask = datamodule.split("test")
    attention = split_attention_mask(datamodule, "test")
    logits = torch.cat([teacher_logits(teacher, ids[i : i + 64], attention[i : i + 64], VOCAB).float()
                        for i in range(0, ids.shape[0], 64)])
    return logits[mask[:, 1:]]


def main() -> None:
    teacher = c.teacher()
    logits = held_out_logits(teacher, c.data())
    fixed = []
    for k in range(1, VOCAB + 1):  # every k: the smallest one meeting each budget at every position
        per_position = kl(logits, sparsify(logits, k, dtype=torch.float16, index_dtype=torch.int32))
        fixed.append({"k": k, "bytes_per_token": k * (2 + 4) + 2, "bytes_per_token_int16_ids": k * (2 + 2) + 2,
                      "mean_kl": float(per_position.mean()), "max_kl": float(per_position.max())})
    adaptive = []
    for eps in BUDGETS:
        began = time.perf_counter()
        ragged, per_position = adaptive_sparsify(logits, eps, 1, VOCAB)
        counts = ragged.counts.double()
        needed = next(row for row in fixed if row["max_kl"] <= eps)
        same_mean = next(row for row in fixed if row["mean_kl"] <= float(per_position.mean()))
        adaptive.append({"kl_budget": eps, "bytes_per_token": ragged_bytes_per_token(ragged),
                         "mean_kl": float(per_position.mean()), "max_kl": float(per_position.max()),
                         "mean_k": float(counts.mean()), "k_quantiles": [float(q) for q in counts.quantile(torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64))],
                         "violations": int((per_position > eps).sum()), "seconds": time.perf_counter() - began,
                         "fixed_k_for_same_max": needed["k"], "fixed_bytes_for_same_max": needed["bytes_per_token"],
                         "fixed_k_for_same_mean": same_mean["k"], "fixed_bytes_for_same_mean": same_mean["bytes_per_token"]})
        print(adaptive[-1], flush=True)
    lines = [
        "# Adaptive-k teacher cache against fixed top-k (Shakespeare char, V = 96)", "",
        (f"Teacher as in lm_kd_vs_sft.md; {logits.shape[0]} completion positions of the held-out test plays. KL(full ‖ "
         "reconstructed) of the fp16 reconstruction the losses use, nats per token. Adaptive: fp16 values, int16 ids, fp16 "
         "tail, int64 offset per position; fixed: fp16 values, int32 ids (as the fixed cache stores them), fp16 tail. "
         "Produced by benchmarks/lm_adaptive_cache.py."), "",
        ("| adaptive, eps | bytes / token | mean k | k at 10/50/90/100 % | mean KL | max KL | fixed k with max KL ≤ eps (bytes) "
         "| fixed k with mean KL ≤ this mean (bytes) |"),
        "|---:|---:|---:|---|---:|---:|---|---|",
        *[f"| {r['kl_budget']:g} | {r['bytes_per_token']:.1f} | {r['mean_k']:.1f} | {'/'.join(f'{q:.0f}' for q in r['k_quantiles'])} | "
          f"{r['mean_kl']:.2e} | {r['max_kl']:.2e} | {r['fixed_k_for_same_max']} ({r['fixed_bytes_for_same_max']}) | "
          f"{r['fixed_k_for_same_mean']} ({r['fixed_bytes_for_same_mean']}) |" for r in adaptive],
        "", "| fixed k | bytes / token (int32 ids) | (int16 ids) | mean KL | max KL |", "|---:|---:|---:|---:|---:|",
        *[f"| {r['k']} | {r['bytes_per_token']} | {r['bytes_per_token_int16_ids']} | {r['mean_kl']:.2e} | {r['max_kl']:.2e} |"
          for r in fixed if r["k"] in FIXED_KS], "",
    ]
    c.write_results("lm_adaptive_cache", {"positions": int(logits.shape[0]), "adaptive": adaptive, "fixed": fixed},
                    "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    began = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - began:.0f} s")
