"""Benchmark: a whole `lm-kd` / `gkd` training step with the fused LM-head loss against the same step
on full logits, at a real vocabulary size.

GPT-2 teacher (2 layers, d 256) and student (1 layer, d 128) built from configs with V = 32,768 or
131,072 (untied heads' size is what matters; weights are random), batch 8 x 256 tokens (2,040 loss
positions), lm-kd (jsd beta 0.5, alpha 0.5: KD + CE) and gkd off-policy (lmbda 0), 4 steps of SGD
each in a fresh child process (this script with --child): the child's own peak resident set
(VmHWM, `anydistill.core.memory`; not ru_maxrss, which a child inherits from its parent) after the
steps, and the median step time of steps 2-4. Repeats are interleaved (fused, unfused, fused, ...)
and ratios are taken within a repeat.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_fused_methods.py   (about 40 minutes here, most of it the unfused V = 128k children)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import lm_common as c

BATCH, BLOCK, STEPS = 8, 256, 4
REPEATS = {32768: 3, 131072: 1}  # at 128k an unfused child holds ~14 GB and takes ~10 min on one shared core
METHODS = ("lm-kd", "gkd")


def child(method_name: str, vocab: int, fused: bool) -> dict:
    import lightning as L
    import torch

    from anydistill.core.memory import peak_rss_mib
    from anydistill.core.recipe import OptimizerSpec
    from anydistill.core.teacher import Teacher
    from anydistill.data.shakespeare import ShakespeareData
    from anydistill.lm.methods.gkd import GKD
    from anydistill.lm.methods.kd import LMKD
    from anydistill.models.causal_lm import gpt2_lm

    torch.manual_seed(0)
    teacher = Teacher(gpt2_lm(vocab_size=vocab, n_layer=2, n_embd=256, n_head=4, n_positions=BLOCK),
                      name="wide-vocab-teacher")
    student = gpt2_lm(vocab_size=vocab, n_layer=1, n_embd=128, n_head=2, n_positions=BLOCK)
    optimizer = OptimizerSpec(name="sgd", lr=0.1, momentum=0.0, schedule="constant")
    if method_name == "lm-kd":
        method = LMKD(student, teacher, optimizer, divergence="jsd", beta=0.5, alpha=0.5, fused_head=fused)
    else:
        method = GKD(student, teacher, optimizer, lmbda=0.0, beta=0.5, fused_head=fused)

    class WideVocab(ShakespeareData):  # random ids over the whole vocabulary, with the char tokenizer's special ids
        def setup(self, stage=None):
            super().setup(stage)
            generator = torch.Generator().manual_seed(1)
            ids = torch.randint(3, vocab, (BATCH * STEPS, BLOCK), generator=generator)
            mask = torch.ones_like(ids, dtype=torch.bool)
            mask[:, :1] = False
            self.splits = {name: (ids, mask) for name in ("train", "val", "test")}

    data = WideVocab(block_size=BLOCK, prompt_tokens=1, batch_size=BATCH, shuffle=False, train_limit=BATCH * STEPS, eval_limit=BATCH)
    clock = c.StepClock()
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                        callbacks=[clock])
    trainer.fit(method, datamodule=data)
    assert method.fused == fused, "the configuration did not take the path it names"
    return {"peak_mib": peak_rss_mib(), "step_seconds": statistics.median(clock.seconds[1:])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocabs", type=int, nargs="+", default=list(REPEATS))
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    runs: dict[tuple, list[dict]] = {}
    for repeat in range(max(REPEATS[v] for v in args.vocabs)):
        for vocab in [v for v in args.vocabs if repeat < REPEATS[v]]:
            for method in METHODS:
                for fused in ((True, False) if repeat % 2 == 0 else (False, True)):
                    done = subprocess.run([sys.executable, __file__, "--child", method, str(vocab), str(int(fused))],
                                          env=env, capture_output=True, text=True, timeout=1200)
                    if done.returncode != 0:
                        raise SystemExit(f"{method} V={vocab} fused={fused} failed:\n{done.stderr[-3000:]}")
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    runs.setdefault((vocab, method, fused), []).append(result)
                    print(repeat, vocab, method, "fused" if fused else "unfused", result, flush=True)

    fmt = lambda values, digits=0: f"{c.mean_std(values)[0]:,.{digits}f} ± {c.mean_std(values)[1]:,.{digits}f}"  # noqa: E731
    lines = [
        "# A whole lm-kd / gkd step, fused LM-head loss vs full logits",
        "",
        f"GPT-2 teacher 2L d256 and student 1L d128 (untied heads, as gpt2-lm builds them; random weights), batch {BATCH} x {BLOCK} tokens, "
        f"{STEPS} SGD steps per fresh child process, {os.environ.get('OMP_NUM_THREADS', '?')} thread(s); peak = the child's own "
        f"VmHWM after the steps (model weights included); step time = median of steps 2-{STEPS}; interleaved repeats "
        f"({', '.join(f'{REPEATS[v]} at V = {v:,}' for v in args.vocabs)}), mean ± std (± 0 for a single repeat). lm-kd: jsd(0.5) with alpha 0.5 (KD + CE); gkd: lmbda 0 (dataset completions).",
        "",
        "| V | method | peak fused (MiB) | peak unfused (MiB) | peak fused / unfused | step fused / unfused |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for vocab in args.vocabs:
        for method in METHODS:
            fused, unfused = runs[(vocab, method, True)], runs[(vocab, method, False)]
            memory = [a["peak_mib"] / b["peak_mib"] for a, b in zip(fused, unfused)]
            speed = [a["step_seconds"] / b["step_seconds"] for a, b in zip(fused, unfused)]
            lines.append(f"| {vocab:,} | {method} | {fmt([r['peak_mib'] for r in fused])} | {fmt([r['peak_mib'] for r in unfused])} | "
                         f"{fmt(memory, 3)} | {fmt(speed, 3)} |")
    run = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_fused_methods.py" + (
        f" --vocabs {' '.join(map(str, args.vocabs))}" if args.vocabs != list(REPEATS) else "")
    lines += ["", f"Run: `{run}`", ""]
    c.write_results("lm_fused_methods", {f"{v}-{m}-{'fused' if f else 'unfused'}": r for (v, m, f), r in runs.items()}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])))))
    else:
        main()
