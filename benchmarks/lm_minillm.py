"""MiniLLM (sequence-level reverse KL by policy gradient, PPO rounds) against token-level forward KL
(`lm-kd`), on-policy per-token reverse KL (`gkd` lambda = 1, beta = 1) and sequence-level KD (`seq-kd`),
in issue 3's Shakespeare setting: the lm_common teacher (GPT-2 4L d128), a 1L d64 student, prompts
of 16 characters continued by 48.

Budgets. MiniLLM makes ppo_epochs x ppo_minibatches = 4 x 4 = 16 optimizer updates (of 8 rollouts
and 8 data blocks each) per round of 32 rollouts, so "equal budget" has two readings that disagree
by 16x; both are run:
  - equal rollouts (primary): 150 rounds = 4,800 rollouts (150 batches of 32 prompts, the very prompts
    and data blocks the baselines see), 2,400 updates;
  - equal updates: 10 rounds = 320 rollouts, 160 updates (the nearest whole round above 150;
    `max_steps` counts updates and a round always finishes).
Every baseline makes 150 updates of batch 32 (4,800 sequences): gkd samples 4,800 student rollouts,
seq-kd 4,800 teacher continuations, lm-kd reads 4,800 data blocks (no generation). The
'generated' (sequences sampled for training: student rollouts, or seq-kd's teacher continuations)
and 'updates' columns say which budget a row had.

Claim, fixed before running (tested on the equal-rollouts budget; the equal-updates row is reported
with the same test): MiniLLM's samples get a lower teacher NLL than lm-kd fkl's by more than 2 std
(mean gap > 2 x the larger of the two seed stds), and their per-position teacher NLL rises less
steeply (rise = mean NLL of generated positions 37-48 minus that of positions 1-12, lower for
MiniLLM). Against gkd lambda = 1, beta = 1 (MiniLLM's single-step term alone, on the student's own
samples): the difference and its seed variance are reported, no direction is claimed.

Metrics (the same evaluator for every row, in the same run): held-out (test plays) NLL and
KL(teacher || student) per completion token; the teacher's NLL per token of the student's own
samples (T = 1, top_k 0, top_p 1; 48 tokens after the 16-character prompts of the 256 test blocks,
sampling seed fixed), overall and per position bucket 1-12, 13-24, 25-36, 37-48 of the generated
text; distinct-2 and distinct-3 (distinct n-grams / n-grams over all generated texts); train
seconds including generation. A 'teacher' and a 'data' reference row give the same sample metrics
for the teacher's own samples and for the real test continuations: a low teacher NLL with a low
distinct-n means repetitive text, not good text.

Run: OMP_NUM_THREADS=1 python benchmarks/lm_minillm.py   (about 15 minutes after the teacher exists, extrapolated
from --smoke on a loaded 2-core machine; --smoke (about 25 s) trains every row a few steps on one seed, prints
the table and the extrapolated time of the full run, and writes nothing)
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import lm_common as c
import torch

from anydistill.lm.common import causal_logits, generate
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.kd import LMKD
from anydistill.lm.methods.minillm import MiniLLM
from anydistill.lm.methods.seq_kd import SeqKD

SEEDS, STEPS, ROLLOUTS = (0, 1, 2), 150, 32
PPO_EPOCHS, PPO_MINIBATCHES = 4, 4
UPDATES_PER_ROUND = PPO_EPOCHS * PPO_MINIBATCHES
EQUAL_UPDATE_ROUNDS = -(-STEPS // UPDATES_PER_ROUND)  # 10 rounds: 160 updates, the nearest whole round >= 150
SAMPLE_PROMPTS, BUCKET = 256, 12
# The shipped recipe's settings (recipes/shakespeare/minillm.yaml, the official GPT-2 script's).
MINILLM = dict(teacher_mixed_alpha=0.2, rkl_advantage=True, single_step_decomposition=True, gamma=1.0,
               length_normalization=True, ppo_epochs=PPO_EPOCHS, ppo_minibatches=PPO_MINIBATCHES, clip_range=0.2,
               reward_scaling=0.5, reward_clip=100.0, lm_coef=1.0, kd_ratio=0.5, max_grad_norm=1.0)


def minillm(s, t):
    return MiniLLM(s, t, c.OPTIMIZER, **MINILLM)


# label -> (builder, training steps (MiniLLM: rounds), optimizer updates per step, sequences generated per step);
# trainer.max_steps = steps x updates per step (global_step counts updates).
METHODS = {
    "minillm, equal rollouts": (minillm, STEPS, UPDATES_PER_ROUND, ROLLOUTS),
    "minillm, equal updates": (minillm, EQUAL_UPDATE_ROUNDS, UPDATES_PER_ROUND, ROLLOUTS),
    "gkd lambda=1 beta=1": (lambda s, t: GKD(s, t, c.OPTIMIZER, lmbda=1.0, beta=1.0, temperature=1.0), STEPS, 1, ROLLOUTS),
    # alpha = 0.5: half forward KL, half CE, the mix of MiniLLM's own LM term (kd_ratio 0.5).
    "lm-kd fkl": (lambda s, t: LMKD(s, t, c.OPTIMIZER, divergence="fkl", alpha=0.5), STEPS, 1, 0),
    "seq-kd sampled (T=1)": (lambda s, t: SeqKD(s, t, c.OPTIMIZER, decoding="sample", temperature=1.0), STEPS, 1, ROLLOUTS),
}
PRIMARY, BASELINE_KD, BASELINE_GKD = "minillm, equal rollouts", "lm-kd fkl", "gkd lambda=1 beta=1"
BUCKETS = tuple(f"pos {lo + 1}-{lo + BUCKET}" for lo in range(0, 48, BUCKET))
KEYS = ("nll", "kl_teacher", "sample_nll", *BUCKETS, "rise", "distinct_2", "distinct_3", "seconds")


class LoopClock(L.Callback):
    """Seconds inside the training loop (first batch start to last batch end): with the total, it
    splits a fit into set-up and per-step cost (the smoke run's extrapolation)."""

    def on_train_batch_start(self, *args) -> None:
        if not hasattr(self, "began"):
            self.began = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.ended = time.perf_counter()


def fit(method, datamodule, updates: int) -> tuple[float, float]:
    """Train for ``updates`` optimizer updates (lm_common.fit's trainer); (total, in-loop) seconds."""
    clock = LoopClock()
    trainer = L.Trainer(max_steps=updates, max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, use_distributed_sampler=False, callbacks=[clock])
    began = time.perf_counter()
    trainer.fit(method, datamodule=datamodule)
    total = time.perf_counter() - began
    if trainer.global_step != updates:
        raise SystemExit(f"{type(method).__name__} made {trainer.global_step} updates instead of {updates}")
    return total, clock.ended - clock.began


def distinct(sequences: list[list[int]], n: int) -> float:
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


@torch.no_grad()
def text_metrics(ids: torch.Tensor, mask: torch.Tensor, teacher_model, prompt: int) -> dict[str, float]:
    """The teacher's NLL of the generated part of ``ids`` [N, L] (``mask`` True on generated tokens),
    overall and per position bucket, and distinct-2/3 of the generated texts."""
    logits = causal_logits(teacher_model, ids, torch.ones_like(ids))[:, prompt - 1 :].float()
    targets, kept = ids[:, prompt:], mask[:, prompt:]
    nll = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)  # [N, 48]
    nll = torch.where(kept, nll, torch.zeros_like(nll))
    out = {"sample_nll": float(nll.sum() / kept.sum().clamp(min=1))}
    for name, lo in zip(BUCKETS, range(0, nll.shape[1], BUCKET)):
        out[name] = float(nll[:, lo : lo + BUCKET].sum() / kept[:, lo : lo + BUCKET].sum().clamp(min=1))
    out["rise"] = out[BUCKETS[-1]] - out[BUCKETS[0]]
    texts = [row[keep].tolist() for row, keep in zip(targets, kept)]
    out.update(distinct_2=distinct(texts, 2), distinct_3=distinct(texts, 3))
    return out


@torch.no_grad()
def sample_metrics(model, teacher_model, datamodule, prompts: int = SAMPLE_PROMPTS, seed: int = 0) -> dict[str, float]:
    """`text_metrics` of ``model``'s samples (T = 1) after the first ``prompts`` test prompts."""
    ids, _ = datamodule.split("test")
    p = datamodule.prompt_tokens
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sequences, mask = generate(model, ids[:prompts, :p], datamodule.block_size - p, do_sample=True,
                                   eos_token_id=1, pad_token_id=0)
    return text_metrics(sequences, mask, teacher_model, p)


def reference_rows(teacher, datamodule, prompts: int) -> dict[str, dict[str, float]]:
    ids, mask = datamodule.split("test")
    return {"teacher (own samples)": sample_metrics(teacher.model, teacher.model, datamodule, prompts),
            "data (test continuations)": text_metrics(ids[:prompts], mask[:prompts], teacher.model, datamodule.prompt_tokens)}


def run(methods: dict, seeds, teacher, datamodule, prompts: int, steps=None) -> tuple[dict, dict]:
    """Every row for every seed; ``steps[label]`` overrides a row's training steps (smoke runs)."""
    results = {label: {k: [] for k in KEYS} for label in methods}
    loop = {label: [] for label in methods}  # (total, in-loop, steps) per seed: for the smoke extrapolation
    for seed in seeds:
        for label, (build, rounds, per_step, _) in methods.items():
            rounds = (steps or {}).get(label, rounds)
            method = build(c.student(seed), teacher)
            total, in_loop = fit(method, datamodule, rounds * per_step)
            found = {**c.scores(method.student, teacher.model, datamodule),
                     **sample_metrics(method.student, teacher.model, datamodule, prompts), "seconds": total}
            for key in KEYS:
                results[label][key].append(found[key])
            loop[label].append((total, in_loop, rounds))
            print(seed, label, {k: round(v, 4) for k, v in found.items()}, flush=True)
    return results, loop


def fmt(values: list[float], digits: int = 4) -> str:
    m, s = c.mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def verdicts(results: dict) -> list[str]:
    lines = []
    kd = results[BASELINE_KD]
    for label in ("minillm, equal rollouts", "minillm, equal updates"):
        mini = results[label]
        for key, what in (("sample_nll", "teacher NLL of samples"), ("rise", "rise of the per-position NLL (37-48 minus 1-12)")):
            gap = statistics.fmean(kd[key]) - statistics.fmean(mini[key])
            spread = max(c.mean_std(kd[key])[1], c.mean_std(mini[key])[1])
            needed = 2 * spread if key == "sample_nll" else 0.0
            holds = gap > needed
            lines.append(f"- {label}: {what} lower than lm-kd fkl's by {gap:+.4f} (needed > {needed:.4f}"
                         f"{' = 2 x larger seed std' if key == 'sample_nll' else ''}): **{'holds' if holds else 'does not hold'}**.")
    gkd = results[BASELINE_GKD]
    for label in ("minillm, equal rollouts", "minillm, equal updates"):
        mini = results[label]
        for key in ("sample_nll", "rise", "nll"):
            paired = [a - b for a, b in zip(mini[key], gkd[key])]
            lines.append(f"- {label} minus gkd lambda=1 beta=1, {key}: {fmt(paired)} (paired by seed; seed stds "
                         f"{c.mean_std(mini[key])[1]:.4f} and {c.mean_std(gkd[key])[1]:.4f}).")
    return lines


def report(results: dict, references: dict, seeds, command: str, prompts: int, steps=None) -> str:
    header = "| method | generated | updates | test NLL | KL(teacher‖student) | teacher NLL of samples | " + " | ".join(BUCKETS) + \
             " | rise | distinct-2 | distinct-3 | train seconds |"
    rows = []
    for label, values in results.items():
        _, rounds, per_step, generated = METHODS[label]
        rounds = (steps or {}).get(label, rounds)
        updates, rollouts = rounds * per_step, rounds * generated
        cells = [fmt(values[k]) for k in ("nll", "kl_teacher", "sample_nll", *BUCKETS, "rise", "distinct_2", "distinct_3")]
        rows.append(f"| {label} | {rollouts:,} | {updates:,} | " + " | ".join(cells) + f" | {fmt(values['seconds'], 1)} |")
    for label, values in references.items():
        cells = [f"{values[k]:.4f}" for k in ("sample_nll", *BUCKETS, "rise", "distinct_2", "distinct_3")]
        rows.append(f"| {label} | | | | | " + " | ".join(cells) + " | |")
    return "\n".join([
        "# MiniLLM vs lm-kd fkl, gkd (lambda=1, beta=1) and seq-kd (Shakespeare, held-out plays)",
        "",
        f"Command: `{command}`. Teacher GPT-2 4L d128 (lm_common, 1200 steps), student 1L d64 from scratch, blocks of 64 "
        f"characters: 16-character prompts, 48 generated; AdamW lr 3e-3, cosine over each row's updates; seeds {list(seeds)}; "
        "mean ± std over seeds.",
        "",
        f"Budgets: MiniLLM rounds of {ROLLOUTS} rollouts, {PPO_EPOCHS} PPO epochs x {PPO_MINIBATCHES} minibatches = "
        f"{UPDATES_PER_ROUND} updates per round (8 rollouts + 8 data blocks each), the recipe's settings (alpha 0.2, gamma 1, "
        "reward scaling 0.5, whitening, LM term with kd_ratio 0.5, clip norm 1). 'equal rollouts': as many generated sequences "
        "and training blocks as the baselines (150 rounds); 'equal updates': the nearest whole number of rounds to 150 updates "
        "(10 rounds). Baselines: 150 updates of batch 32; gkd on the student's own samples at T = 1 (per-token reverse KL); "
        "lm-kd alpha 0.5 (forward KL + CE, on the data's 48 completion tokens); seq-kd on teacher samples at T = 1. "
        "lm-kd generates nothing ('generated' 0).",
        "",
        f"Sample metrics: the teacher's NLL per token of 48 tokens sampled (T = 1) after the 16-character prompts of {prompts} "
        "test blocks (fixed sampling seed), overall and by generated position; 'rise' = positions 37-48 minus 1-12; "
        "distinct-n over all generated texts. Reference rows: the teacher's own samples and the real test continuations.",
        "",
        header,
        "|---|---:|---:|" + "---:|" * len(KEYS),
        *rows,
        "",
        "Claim (fixed before running): MiniLLM's samples get a lower teacher NLL than lm-kd fkl's by > 2 std and their "
        "per-position NLL rises less steeply; against gkd lambda=1 beta=1 the difference and seed variance are reported.",
        "",
        *verdicts(results),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="1 seed, 10 baseline steps, 2 and 1 MiniLLM rounds, 64 sample prompts; prints the full run's estimated time, writes nothing")
    args = parser.parse_args()
    teacher, datamodule = c.teacher(), c.data()
    if args.smoke:
        steps = {label: 10 for label in METHODS} | {"minillm, equal rollouts": 2, "minillm, equal updates": 1}
        began = time.perf_counter()
        results, loop = run(METHODS, SEEDS[:1], teacher, datamodule, 64, steps)
        smoke_seconds = time.perf_counter() - began
        print(report(results, reference_rows(teacher, datamodule, 64), SEEDS[:1], "smoke", 64, steps))
        # Extrapolate: set-up (total - in-loop) + per-round in-loop cost x the full rounds, per row and seed,
        # plus evaluation (measured here at 64 prompts; x4 for 256, a generous bound).
        estimate = 0.0
        for label, runs in loop.items():
            total, in_loop, rounds = runs[0]
            full_rounds = METHODS[label][1]
            estimate += (total - in_loop) + in_loop / rounds * full_rounds
        evaluation = smoke_seconds - sum(r[0][0] for r in loop.values())
        estimate = len(SEEDS) * (estimate + 4 * evaluation)
        for label, runs in loop.items():
            total, in_loop, rounds = runs[0]
            print(f"{label}: set-up {total - in_loop:.1f} s, {in_loop / rounds:.3f} s per {'round' if 'minillm' in label else 'step'}")
        print(f"smoke {smoke_seconds:.0f} s; estimated full run (3 seeds): {estimate / 60:.1f} min")
        return
    began = time.perf_counter()
    results, _ = run(METHODS, SEEDS, teacher, datamodule, SAMPLE_PROMPTS)
    references = reference_rows(teacher, datamodule, SAMPLE_PROMPTS)
    markdown = report(results, references, SEEDS, "OMP_NUM_THREADS=1 python benchmarks/lm_minillm.py", SAMPLE_PROMPTS)
    c.write_results("lm_minillm", {"seeds": list(SEEDS), "minillm": MINILLM, "sample_prompts": SAMPLE_PROMPTS,
                                   "budgets": {label: {"steps": m[1], "updates": m[1] * m[2], "generated": m[1] * m[3]} for label, m in METHODS.items()},
                                   "results": results, "references": references, "seconds": time.perf_counter() - began}, markdown)
    print(markdown)


if __name__ == "__main__":
    began = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - began:.0f} s")
