"""Sequence-level KD (seq-kd: SFT on the teacher's sampled, greedy or beam-search continuations)
against SFT on the data, at equal steps over 3 seeds.

Run: OMP_NUM_THREADS=1 python benchmarks/lm_seqkd.py   (about 25 minutes after the teacher exists: the on-the-fly
sampled and greedy rows generate 48 teacher tokens every step)
"""

from __future__ import annotations

import tempfile
import time

import lm_common as c
from anydistill.lm.methods.seq_kd import SeqKD
from anydistill.lm.methods.sft import LMSFT

SEEDS, STEPS = (0, 1, 2), 150
# Every method trains on the same 4,800 training blocks (evenly spaced over the plays): 150 steps of
# 32 see each once. The paper decodes the whole training set with beam search; here the whole split
# (61,540 blocks) would take ~25 min of beam search for 4,800 blocks of training.
TRAIN_BLOCKS = 4800
BEAM_STORE = tempfile.mkdtemp(prefix="seqkd-beam-")
METHODS = {
    "lm-sft": lambda s, t: LMSFT(s, None, c.OPTIMIZER),
    "seq-kd sampled (T=1)": lambda s, t: SeqKD(s, t, c.OPTIMIZER, decoding="sample", temperature=1.0),
    "seq-kd greedy": lambda s, t: SeqKD(s, t, c.OPTIMIZER, decoding="greedy"),
    # The paper's: beam search over every training prompt once, stored, then plain SFT on it. The store
    # lives in a fresh temporary directory, so the first seed's seconds include building it.
    "seq-kd beam (5, stored)": lambda s, t: SeqKD(s, t, c.OPTIMIZER, decoding="beam", num_beams=5, cache_dir=BEAM_STORE),
}


def main() -> None:
    teacher, datamodule = c.teacher(), c.data(train_limit=TRAIN_BLOCKS)
    keys = c.SAMPLE_KEYS
    results = c.seeded_runs(METHODS, teacher, datamodule, SEEDS, STEPS)
    lines = [
        "# Sequence-level KD vs SFT (Shakespeare, held-out plays)",
        "",
        f"Same teacher and student as lm_kd_vs_sft.md; {STEPS} steps of batch 32 over {TRAIN_BLOCKS:,} training blocks (each "
        "seen once); the teacher continues the first 16 characters of each block with 48 characters (KV cache) and the "
        "student is trained with cross-entropy on them: sampled and greedy continuations afresh for every batch, beam-search "
        "ones (5 beams) once for every training prompt before training, stored (the first seed's seconds include that "
        f"build, the others read the store); seeds {list(SEEDS)}; mean ± std. 'teacher NLL of samples' as in lm_onpolicy.md.",
        "",
        "| method | test NLL | KL(teacher‖student) | teacher NLL of samples | train seconds |",
        "|---|---:|---:|---:|---:|",
        *[c.row(label, values, keys) for label, values in results.items()],
        "",
    ]
    c.write_results("lm_seqkd", {"steps": STEPS, "seeds": list(SEEDS), "results": results}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    began = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - began:.0f} s")
