"""Benchmark (d): the top-k teacher cache, k in {1, 8, 32, full} with and without the tail bucket.

Part 1 (no training): bytes per token and KL(full || reconstructed) of the teacher's distributions
on the held-out test plays. Part 2: students trained for one epoch over the same 9,600 training
blocks from each cache (3 seeds), next to online dense KD and SFT on the same blocks.

Run: OMP_NUM_THREADS=1 python benchmarks/lm_topk.py   (about 8 minutes after the teacher exists)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

import lm_common as c
from anydistill.lm.common import teacher_logits
from anydistill.lm.methods.kd import LMKD
from anydistill.lm.methods.sft import LMSFT
from anydistill.lm.topk import bytes_per_token, reconstruction_kl, sparsify

SEEDS, STEPS, VOCAB = (0, 1, 2), 300, 96
KS = (1, 8, 32, VOCAB)


def held_out_reconstruction(teacher, datamodule, ks=KS, tails=(True, False)) -> list[dict]:
    """Bytes per token and mean KL(full || reconstructed) on the test plays' completion positions."""
    ids, mask = datamodule.split("test")
    logits = torch.cat([teacher_logits(teacher, ids[i : i + 64], torch.ones_like(ids[i : i + 64]), VOCAB)
                        for i in range(0, ids.shape[0], 64)])
    rows = logits[mask[:, 1:]]  # the completion positions
    out = []
    for k in ks:
        for tail in tails:
            sparse = sparsify(rows, k, tail, dtype=torch.float16, index_dtype=torch.int32)
            kl = reconstruction_kl(rows, sparse)
            out.append({"k": k, "tail": tail, "bytes_per_token": bytes_per_token(sparse),
                        "kl_full_reconstructed": float(kl.mean()), "positions": int(rows.shape[0])})
            print(out[-1], flush=True)
    return out


def main() -> None:
    teacher = c.teacher()
    datamodule = c.data(train_limit=STEPS * c.DATA["batch_size"])  # one epoch = STEPS steps; cache only these
    reconstruction = held_out_reconstruction(teacher, datamodule)
    cache_root = Path(tempfile.mkdtemp(prefix="lm-topk-bench-"))
    configs = {"lm-sft": None, "lm-kd online dense": {}}
    for k in KS:
        for tail in (True, False):
            if k == VOCAB and not tail:
                continue  # identical to k = V with a tail (the tail is empty)
            configs[f"lm-kd top-{k}{' + tail' if tail else ', renormalised'}"] = {"topk": k, "topk_tail": tail}
    keys = ("nll", "kl_teacher", "seconds")
    results = {label: {key: [] for key in keys} for label in configs}
    try:
        for seed in SEEDS:
            for label, extra in configs.items():
                if extra is None:
                    method = LMSFT(c.student(seed), None, c.OPTIMIZER)
                else:
                    method = LMKD(c.student(seed), teacher, c.OPTIMIZER, divergence="fkl", alpha=1.0,
                                  cache_dir=str(cache_root), **extra)
                seconds = c.fit(method, datamodule, STEPS)
                scores = c.scores(method.student, teacher.model, datamodule)
                for key, value in {**scores, "seconds": seconds}.items():
                    results[label][key].append(value)
                print(seed, label, scores, f"{seconds:.1f}s", flush=True)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    recon_lines = [f"| {r['k']} | {'yes' if r['tail'] else 'no'} | {r['bytes_per_token']} | {r['kl_full_reconstructed']:.3g} |"
                   for r in reconstruction]
    lines = [
        "# Top-k teacher cache (Shakespeare char, V = 96)",
        "",
        f"Teacher as in lm_kd_vs_sft.md. Storage: fp16 log-probabilities, int32 ids, fp16 tail; the dense fp32 logits "
        f"cost {4 * VOCAB} bytes per token. KL(full ‖ reconstructed) is the mean over {reconstruction[0]['positions']} "
        "completion positions of the held-out test plays (nats per token); without a tail it is +inf for k < V.",
        "",
        "| k | tail | bytes / token | KL(full ‖ reconstructed) |",
        "|---:|---|---:|---:|",
        *recon_lines,
        "",
        f"Students (1L d64) trained with pure forward KL (alpha = 1) for {STEPS} steps = one epoch over the same "
        f"{STEPS * c.DATA['batch_size']} training blocks; each cache is built once (one teacher pass over those "
        f"blocks, counted in seed {SEEDS[0]}'s seconds) and read by the later seeds; seeds {list(SEEDS)}; mean ± std.",
        "",
        "| training signal | test NLL | KL(teacher‖student) | train seconds |",
        "|---|---:|---:|---:|",
        *[c.row(label, values, keys) for label, values in results.items()],
        "",
    ]
    c.write_results("lm_topk", {"steps": STEPS, "seeds": list(SEEDS), "reconstruction": reconstruction, "results": results},
                    "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    began = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - began:.0f} s")
