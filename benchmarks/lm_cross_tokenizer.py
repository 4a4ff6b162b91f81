"""Cross-tokenizer distillation (issue 25, section 1): ULD and GOLD against SFT, cross-tokenizer
sequence-level KD and a same-tokenizer token-KD ceiling, on Shakespeare, at equal steps over 3 seeds.

Pairs (the student's tokenizer <- the teacher's):
  (a) char teacher -> byte-level BPE-4k student (the ``shakespeare/bpe`` tokenizer),
  (b) BPE-4k teacher -> char student.
Two teachers of equal size and training (GPT-2 4L d128, the same steps, batch and optimizer; blocks
of about the same text, 128 characters or 42 BPE tokens) are trained here once and cached under
benchmarks/runs/lm_cross_tokenizer/. Each pair's students are GPT-2 1L d64 on blocks of about 64
characters (the char student: 64 characters, prompt 16; the BPE student: 21 tokens, prompt 5).

Rows, per pair, all at the same steps and batch on the same training blocks in the same order:
  lm-sft              the student alone on the text
  seq-kd (cross-tok)  CE on the teacher's sampled continuations (T = 1) of the prompts, re-tokenised
                      for the student: GOLD with lmbda 0, seq_kd, distillation_weight 0, CE weight 1
  uld                 the reference's weights (CE 1, sorted-L1 1.5)
  gold                TRL's defaults (lmbda 0.5, beta 0.5, T 0.9, top_p 0.95, no CE, skip_eos) with the
                      hybrid loss, our default (JSD on ids of the same bytes, sorted L1 on the rest)
  gold, hybrid off    the same with TRL's default loss: sorted L1 (ULD) over the merged groups
  lm-kd (ceiling)     token-level KD (fkl, alpha 0.5) from the teacher of the student's own tokenizer

Metrics (tokenizer-free): held-out NLL in nats per character (summed token NLL over the test
completions / their characters, `anydistill.lm.evaluate.completion_characters`), and the teacher's
NLL per character of the student's own samples (T = 1, 48-ish characters after 64 held-out
prompts; the text is re-tokenised for the pair's teacher and scored there).

Claim, fixed before running: in each pair, ULD and GOLD (the ``gold`` row: hybrid, our default) each
beat SFT on held-out NLL per character by more than 2 standard deviations (mean(SFT) - mean(method)
> 2 * max(std(SFT), std(method)), seeds 0, 1, 2), and GOLD <= ULD (mean held-out NLL per character).
The results state per pair whether it holds (and the same check for the hybrid-off row, for information).

Run:   OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_cross_tokenizer.py
Smoke: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_cross_tokenizer.py --smoke   (a few steps, 1 seed, nothing written;
       --steps / --teacher-steps / --seeds override the scale for timing runs, which write nothing either)
"""

from __future__ import annotations

import argparse
import sys
import time

import lightning as L
import lm_common as c
import torch
from safetensors.torch import load_file, save_file

from anydistill.core.teacher import Teacher
from anydistill.data.paired_text import PairedShakespeareData, TokenizerPair
from anydistill.data.shakespeare import ShakespeareData
from anydistill.lm.common import causal_logits, generate
from anydistill.lm.evaluate import completion_characters, held_out_nll
from anydistill.lm.methods.gold import GOLD
from anydistill.lm.methods.kd import LMKD
from anydistill.lm.methods.sft import LMSFT
from anydistill.lm.methods.uld import ULD
from anydistill.lm.token_losses import token_ce_loss
from anydistill.models.causal_lm import gpt2_lm

RUNS = c.RUNS.parent / "lm_cross_tokenizer"
SEEDS, STEPS, BATCH = (0, 1, 2), 150, 32
TEACHER_STEPS, TEACHER_LAYERS, TEACHER_WIDTH = 1200, 4, 128  # 1,200 as the other LM benchmarks
STUDENT_LAYERS, STUDENT_WIDTH = 1, 64
# Per tokenizer: ids of the models, the teacher's training blocks (about 128 characters each), its
# rows in the paired data (``teacher_rows``, data.teacher_block_size; at most half of it prompt) and
# the student's blocks and prompts (about 64 characters, 16 of them prompt). Shakespeare's BPE-4k
# averages 3.05 characters per token (train 3.07, test 2.91). The BPE student's 5-token prompts are
# at most 41 characters and its 16-token completions at most 87 (99 % within 67): the char
# teacher's rows of 104 characters cut about 1 % of completions (the methods compare the text both
# sides have) and keep cross-tokenizer seq-kd's teacher generation to 63 characters.
KINDS = {
    "char": {"vocab": 96, "teacher_block": 128, "teacher_rows": 104, "block": 64, "prompt": 16},
    "bpe": {"vocab": 4096, "teacher_block": 42, "teacher_rows": 42, "block": 21, "prompt": 5},
}
PAIRS = {"a: char teacher -> BPE student": ("char", "bpe"), "b: BPE teacher -> char student": ("bpe", "char")}
SAMPLE_BLOCKS = 64
EVAL_LIMIT = 512


def teacher(kind: str, steps: int) -> tuple[Teacher, float | None]:
    """The teacher of tokenizer ``kind``, trained once (``steps`` steps of CE) and cached; and the
    training seconds when it was trained now."""
    spec = KINDS[kind]
    path = RUNS / f"gpt2-{kind}-L{TEACHER_LAYERS}-d{TEACHER_WIDTH}-block{spec['teacher_block']}-steps{steps}.safetensors"
    L.seed_everything(1234, verbose=False)
    model = gpt2_lm(vocab_size=spec["vocab"], n_layer=TEACHER_LAYERS, n_embd=TEACHER_WIDTH, n_head=4, n_positions=spec["teacher_block"])
    seconds = None
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
    else:
        data = ShakespeareData(tokenizer=kind, block_size=spec["teacher_block"], batch_size=BATCH, eval_limit=64, seed=0)
        seconds = c.fit(c.LMTeacher(model, None, c.OPTIMIZER), data, steps)
        RUNS.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        print(f"{kind} teacher trained in {seconds:.0f} s -> {path}", flush=True)
    return Teacher(model.eval(), name=path.stem), seconds


def student(kind: str, seed: int):
    L.seed_everything(seed, verbose=False)
    spec = KINDS[kind]
    return gpt2_lm(vocab_size=spec["vocab"], n_layer=STUDENT_LAYERS, n_embd=STUDENT_WIDTH, n_head=2, n_positions=spec["block"])


def student_data(student_kind: str, teacher_kind: str | None, train_blocks: int):
    """The student's blocks; with ``teacher_kind`` the same blocks paired with that teacher's tokens."""
    spec = KINDS[student_kind]
    settings = {"tokenizer": student_kind, "block_size": spec["block"], "prompt_tokens": spec["prompt"], "batch_size": BATCH,
                "train_limit": train_blocks, "eval_limit": EVAL_LIMIT, "seed": 0}
    if teacher_kind is None:
        module = ShakespeareData(**settings)
    else:
        module = PairedShakespeareData(teacher_tokenizer=teacher_kind, teacher_block_size=KINDS[teacher_kind]["teacher_rows"], **settings)
    module.setup()
    return module


def nll_per_char(model, datamodule) -> float:
    """Held-out NLL, nats per character of the test completions (the evaluator's ``nll_per_char``)."""
    model.eval()
    ids, mask = datamodule.split("test")
    nll, _ = held_out_nll(model, ids, mask)
    return nll * int(mask[:, 1:].sum()) / completion_characters(datamodule.tokenizer, ids, mask)


@torch.no_grad()
def judged_samples(model, datamodule, judge: Teacher, judge_tokenizer, *, seed: int = 0) -> tuple[float, int]:
    """The judge's NLL per character of the model's samples (T = 1, top_k 0) after the first
    ``prompt_tokens`` tokens of ``SAMPLE_BLOCKS`` held-out blocks, up to the block's length or the
    first ``<eos>``. Prompt and completion are decoded to text and tokenised by the judge apart (the
    completion starts at a token boundary, as in the paired data); the judge scores the completion's
    tokens and the sum is divided by the completion's characters (`completion_characters`).

    Returns ``(nats per character, characters the judge's tokenizer could not encode)``: those are
    dropped from the judge's input but still counted in the denominator.
    """
    from anydistill.data.tokenizers import SPECIAL_TOKENS

    model.eval()
    tokenizer = datamodule.tokenizer
    ids, _ = datamodule.split("test")
    prompts = ids[:SAMPLE_BLOCKS, : datamodule.prompt_tokens]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sequences, mask = generate(model, prompts, datamodule.block_size - datamodule.prompt_tokens, do_sample=True,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    characters = completion_characters(tokenizer, sequences, mask)
    pair = TokenizerPair(tokenizer, judge_tokenizer)  # the student's <eos> reads as the judge's
    vocabulary = set(judge_tokenizer.get_vocab())
    positions = judge.model.config.n_positions
    rows, dropped = [], 0
    for sequence, row_mask in zip(sequences.tolist(), mask.tolist()):
        prompt_text = pair.text(sequence[: datamodule.prompt_tokens], "student")
        completion_text = pair.text([t for t, m in zip(sequence, row_mask) if m], "student")
        if all(len(token) == 1 for token in vocabulary - set(SPECIAL_TOKENS)):  # a char judge: count what it cannot read
            dropped += sum(ch not in vocabulary for ch in completion_text.replace(judge_tokenizer.eos_token, ""))
        prompt = judge_tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion = judge_tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        prompt = prompt[max(0, len(prompt) + len(completion) - positions):]  # the judge keeps the whole completion
        rows.append((prompt, completion[:positions - 1]))
    width = max(len(p) + len(q) for p, q in rows)
    pad = judge_tokenizer.pad_token_id
    batch = torch.full((len(rows), width), pad, dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (p, q) in enumerate(rows):
        batch[r, : len(p) + len(q)] = torch.tensor(p + q, dtype=torch.long)
        attention[r, : len(p) + len(q)] = 1
        scored[r, max(len(p), 1) : len(p) + len(q)] = True  # right padding: earlier positions are unaffected
    logits = causal_logits(judge.model, batch, attention)
    total, _ = token_ce_loss(logits, batch[:, 1:], scored[:, 1:])
    return float(total) / max(characters, 1), dropped


def cross_seq_kd(s, t):
    """Sequence-level KD across tokenizers: the teacher samples (T = 1, no nucleus) continuations of
    the prompts in its own tokens, they are carried to the student's tokens as text, and the student
    is trained with CE on them alone (no distillation term; hybrid off, so no shared vocabulary is built)."""
    return GOLD(s, t, c.OPTIMIZER, lmbda=0.0, seq_kd=True, temperature=1.0, top_p=1.0, hybrid=False,
                distillation_weight=0.0, crossentropy_weight=1.0)


OFF = "gold, hybrid off (TRL's default loss)"
# label -> (build(student, cross_teacher, same_teacher), needs paired data)
METHODS = {
    "lm-sft": (lambda s, cross, same: LMSFT(s, None, c.OPTIMIZER), False),
    "seq-kd (cross-tok, T=1)": (lambda s, cross, same: cross_seq_kd(s, cross), True),
    "uld": (lambda s, cross, same: ULD(s, cross, c.OPTIMIZER, crossentropy_weight=1.0, distillation_weight=1.5), True),
    "gold": (lambda s, cross, same: GOLD(s, cross, c.OPTIMIZER), True),
    OFF: (lambda s, cross, same: GOLD(s, cross, c.OPTIMIZER, hybrid=False), True),
    "lm-kd, same-tokenizer teacher (ceiling)": (lambda s, cross, same: LMKD(s, same, c.OPTIMIZER, divergence="fkl", alpha=0.5), False),
}
KEYS = ("nll_per_char", "teacher_nll_per_char_of_samples", "seconds")


def verdict(results: dict[str, dict[str, list[float]]]) -> list[str]:
    """The fixed claim, checked on held-out NLL per character."""
    sft_mean, sft_std = c.mean_std(results["lm-sft"]["nll_per_char"])
    lines, holds = [], True
    for label in ("uld", "gold"):
        mean, std = c.mean_std(results[label]["nll_per_char"])
        margin, bar = sft_mean - mean, 2 * max(sft_std, std)
        ok = margin > bar
        holds &= ok
        lines.append(f"- {label} vs lm-sft: SFT − {label} = {margin:+.4f} nats/char, 2 × max std = {bar:.4f}: "
                     f"{'beats SFT by > 2 std' if ok else 'does NOT beat SFT by > 2 std'}.")
    gold, uld = c.mean_std(results["gold"]["nll_per_char"])[0], c.mean_std(results["uld"]["nll_per_char"])[0]
    holds &= gold <= uld
    lines.append(f"- GOLD ≤ ULD: {gold:.4f} vs {uld:.4f}: {'yes' if gold <= uld else 'NO'}.")
    lines.append(f"- **Claim {'holds' if holds else 'does not hold'} for this pair.**")
    mean, std = c.mean_std(results[OFF]["nll_per_char"])
    margin, bar = sft_mean - mean, 2 * max(sft_std, std)
    lines.append(f"- (For information, not part of the claim: {OFF}: SFT − it = {margin:+.4f}, 2 × max std = {bar:.4f}; "
                 f"{'≤' if mean <= uld else '>'} ULD.)")
    return lines


def row(label: str, values: dict[str, list[float]]) -> str:
    cells = []
    for key in KEYS:
        m, s = c.mean_std(values[key])
        cells.append(f"{m:.1f} ± {s:.1f}" if key == "seconds" else f"{m:.4f} ± {s:.4f}")
    cells.append(str(sum(values["judge_dropped_characters"])))
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps, one seed, untrained-ish teachers; nothing written")
    parser.add_argument("--steps", type=int, help=f"student steps (default {STEPS}; anything but the defaults writes nothing)")
    parser.add_argument("--teacher-steps", type=int, help=f"teacher steps (default {TEACHER_STEPS})")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {list(SEEDS)})")
    args = parser.parse_args()
    seeds, steps, teacher_steps = ((0,), 4, 8) if args.smoke else (SEEDS, STEPS, TEACHER_STEPS)
    seeds, steps = tuple(args.seeds or seeds), args.steps or steps
    teacher_steps = args.teacher_steps or teacher_steps
    dry = args.smoke or (seeds, steps, teacher_steps) != (SEEDS, STEPS, TEACHER_STEPS)
    began = time.perf_counter()
    teachers, teacher_seconds, teacher_scores = {}, {}, {}
    for kind in KINDS:
        teachers[kind], teacher_seconds[kind] = teacher(kind, teacher_steps)
    results: dict[str, dict] = {}
    sections = []
    count = lambda model: sum(p.numel() for p in model.parameters())
    sizes = {kind: {"teacher": count(teachers[kind].model), "student": count(student(kind, 0))} for kind in KINDS}
    for pair_label, (teacher_kind, student_kind) in PAIRS.items():
        cross, same = teachers[teacher_kind], teachers[student_kind]
        plain = student_data(student_kind, None, steps * BATCH)  # every block seen once
        paired = student_data(student_kind, teacher_kind, steps * BATCH)
        judge_tokenizer = paired.teacher_tokenizer
        # Both teachers on the held-out plays, each in its own tokens (blocks of the same layout as the students').
        own = student_data(teacher_kind, None, BATCH)
        teacher_scores[pair_label] = {"teacher_nll_per_char": nll_per_char(cross.model, own),
                                      "same_tokenizer_teacher_nll_per_char": nll_per_char(same.model, plain)}
        found = {label: {k: [] for k in (*KEYS, "judge_dropped_characters")} for label in METHODS}
        for seed in seeds:
            for label, (build, needs_pairs) in METHODS.items():
                datamodule = paired if needs_pairs else plain
                method = build(student(student_kind, seed), cross, same)
                seconds = c.fit(method, datamodule, steps)
                score = nll_per_char(method.student, plain)
                judged, dropped = judged_samples(method.student, plain, cross, judge_tokenizer)
                for key, value in {"nll_per_char": score, "teacher_nll_per_char_of_samples": judged, "seconds": seconds,
                                   "judge_dropped_characters": dropped}.items():
                    found[label][key].append(value)
                print(f"[{pair_label}] seed {seed} {label}: nll/char {score:.4f}, teacher nll/char of samples {judged:.4f}"
                      f"{f' ({dropped} characters the judge cannot read)' if dropped else ''}, {seconds:.1f}s", flush=True)
        results[pair_label] = found
        scores = teacher_scores[pair_label]
        sections += [
            f"## Pair {pair_label}",
            "",
            (f"Teacher ({teacher_kind}) held-out NLL {scores['teacher_nll_per_char']:.4f} nats/char; the ceiling's same-tokenizer "
            f"teacher ({student_kind}) {scores['same_tokenizer_teacher_nll_per_char']:.4f}. Student tokenizer: {student_kind}, blocks of "
            f"{KINDS[student_kind]['block']} tokens, prompts of {KINDS[student_kind]['prompt']}."),
            "",
            "| method | held-out NLL (nats/char) | teacher NLL/char of samples | train seconds | characters the teacher cannot read |",
            "|---|---:|---:|---:|---:|",
            *[row(label, values) for label, values in found.items()],
            "",
            "Claim:",
            *verdict(found),
            "",
        ]
    total = time.perf_counter() - began
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(["benchmarks/lm_cross_tokenizer.py", *sys.argv[1:]])
    lines = [
        "# Cross-tokenizer distillation: ULD and GOLD vs SFT (Shakespeare, held-out plays)",
        "",
        f"Command: `{command}` ({total / 60:.0f} min on 1 thread, teachers {'cached' if not any(teacher_seconds.values()) else 'trained in this run'}).",
        "",
        ("**Claim, fixed before running:** in each pair, ULD and GOLD (the `gold` row: hybrid loss, our default) each beat SFT on "
        "held-out NLL per character by more than 2 standard deviations (mean(SFT) − mean(method) > 2 × max(std(SFT), "
        "std(method)), seeds 0, 1, 2), and GOLD ≤ ULD (means)."),
        "",
        (f"**Setup.** Teachers: GPT-2 {TEACHER_LAYERS}L d{TEACHER_WIDTH} per tokenizer, the same body (char: 96 logits, "
        f"{sizes['char']['teacher']:,} parameters, blocks of {KINDS['char']['teacher_block']} characters; BPE-4k: 4,096 logits, "
        f"{sizes['bpe']['teacher']:,} parameters, most of them the embeddings, blocks of {KINDS['bpe']['teacher_block']} tokens, "
        f"about the same text), {teacher_steps} steps of next-token CE, batch {BATCH}, AdamW lr 3e-3 cosine, seed 1234. Students: "
        f"GPT-2 {STUDENT_LAYERS}L d{STUDENT_WIDTH} from scratch (char {sizes['char']['student']:,} parameters, BPE "
        f"{sizes['bpe']['student']:,}), {steps} steps of batch {BATCH} for every method, on the same "
        f"{steps * BATCH} training blocks (evenly spaced over the training plays, each seen once) in the same order; seeds "
        f"{list(seeds)}, mean ± std. Char student: blocks of 64 characters, prompts of 16; BPE student: blocks of 21 tokens "
        "(about 64 characters), prompts of 5. The paired data re-tokenises each block's prompt and completion for the teacher "
        f"(rows of at most {KINDS['char']['teacher_rows']} characters / {KINDS['bpe']['teacher_rows']} BPE tokens, at most half "
        "of them prompt; a longer completion is compared where both sides have it)."),
        "",
        ("**Methods.** lm-sft: CE on the text. seq-kd (cross-tok): GOLD with lmbda 0, seq_kd, distillation_weight 0, "
        "crossentropy_weight 1, T 1, top_p 1 — CE on the teacher's sampled continuations of the prompts, carried to the "
        "student's tokens as text. uld: CE 1 + 1.5 × sorted L1 (the reference's weights). gold: TRL's defaults (lmbda 0.5, "
        "beta 0.5, T 0.9, top_p 0.95, CE 0, distillation 1, skip_eos) with the hybrid loss (JSD on ids of the same bytes, "
        "sorted L1 on the rest, w_m = M/V_t). gold, hybrid off: the same with TRL's default loss, sorted L1 over the merged "
        "groups. lm-kd (ceiling): forward KL, alpha 0.5, from the same-size teacher of the "
        "student's own tokenizer."),
        "",
        (f"**Metrics.** Held-out NLL per character: the student's summed NLL over the completions of {EVAL_LIMIT} test blocks "
        "(plays never trained on) divided by their characters (`completion_characters`, as the evaluator's `nll_per_char`). "
        f"Teacher NLL/char of samples: the student samples (T = 1) the rest of {SAMPLE_BLOCKS} test blocks after their prompts; "
        "prompt and completion are decoded to text, tokenised by the pair's teacher (the cross-tokenizer one, for every row) and "
        "the teacher's NLL of the completion is divided by its characters; characters the char teacher has no id for (a BPE "
        "sample may hold bytes that are not UTF-8, or characters absent from the plays) are left out of its input but kept in the "
        "denominator, and counted in the last column (sum over seeds). Seconds: training wall time, 1 thread."),
        "",
        *sections,
    ]
    markdown = "\n".join(lines)
    if dry:
        print(markdown)
    else:
        c.write_results("lm_cross_tokenizer", {"command": command, "steps": steps, "teacher_steps": teacher_steps, "seeds": list(seeds),
                                               "kinds": KINDS, "parameters": sizes, "teachers": teacher_scores, "teacher_train_seconds": teacher_seconds,
                                               "total_seconds": total, "results": results}, markdown)
        print(markdown)
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
