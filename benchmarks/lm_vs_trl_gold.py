"""GOLD throughput and peak memory next to TRL's GOLDTrainer, on identical tiny models across two
tokenizers, measured interleaved in one run (issue 25; the model of benchmarks/lm_vs_trl.py and
benchmarks/lm_vs_trl_minillm.py).

Acceptance (issue 25): same data, batch and lengths, fp32, 2 threads, interleaved in one run, the
parity point holding: completion tokens/s of ours >= 1.0x TRL's and peak memory (each process's own)
<= TRL's, both reported as ratios ours / trl, per configuration.

Set-up (the parent, once per run, into a temporary directory; nothing is cached):
  student  GPT-2 1L d64, n_positions 64, the byte-level BPE-4k of the Shakespeare data
           (anydistill.data.shakespeare, ``tokenizer: bpe``), 4,096 logits
  teacher  GPT-2 2L d64, n_positions 1024, a *byte* tokenizer: one id per byte (ids 2..257,
           <pad> 0, <eos> 1), ByteLevel pre-tokenizer and decoder, no merges: a character
           tokenizer in the form TRL can align. TRL's cross-tokenizer ULD encodes the teacher's
           completions with `encode_with_byte_offsets`, which raises NotImplementedError for any
           tokenizer that is not ByteLevel (a plain `char_tokenizer` fails in the first step). The
           rows are ASCII, so every character is one teacher token. 258 logits, exactly its ids: ours
           leaves logits past a tokenizer out of the loss (`text_widths`, lm/paired.py) while TRL
           counts them, so a padded head would add a mismatch of the set-up's making.
  Both are trained briefly (plain next-token CE, AdamW 3e-3: 150 steps of 32 blocks each) so that the
  student samples text and not byte soup; both are saved with save_pretrained, each with its tokenizer.
  rows     prompt/completion text rows cut from the training plays at BPE word boundaries, ASCII, that
           re-tokenise to exactly PROMPT (8) student tokens and COMPLETION - 1 (31) student tokens,
           apart and joined (so TRL's joint tokenisation and ours, prompt and completion apart, give the
           same ids), all of the same character counts (the most common pair: 27 + 99), so every
           row is PROMPT + COMPLETION = 40 student tokens with the <eos> and the same number of teacher
           tokens on both sides; a multiple of BATCH of them, written to train.jsonl. Ours reads the
           file with PairedLMDataset (format prompt-completion, block_size 40, prompt_tokens 8); TRL
           gets the same rows as a prompt/completion Dataset (not conversational, no chat template).

Protocol. Each (configuration, repeat) runs in a fresh child process, so its peak RSS (VmHWM from
/proc/self/status, via anydistill.core.memory.peak_rss_mib; `ru_maxrss` would read the parent's
high-water mark) is its own, in the order repeat 1: every configuration, repeat 2: every
configuration, ... (machine drift hits every configuration alike). A child trains STEPS steps of
BATCH 32 rows, fp32, THREADS intra-op threads, dropout off (all pdrop 0 and TRL's disable_dropout),
no gradient checkpointing, no gradient clipping, AdamW (torch.optim.AdamW: TRL optim adamw_torch) lr
3e-3 constant, weight decay 0, no logging or checkpoints, and reports each step's wall time from the
step-begin to the step-end hook (Lightning's on_train_batch_start/end, HF's on_step_begin/end; data
loading and collation excluded for both; TRL's on-policy generation runs inside its step, in
_prepare_inputs). Completion tokens/s = BATCH x COMPLETION (32 x 32, the <eos> included; on-policy
nominal: the max_completion_length, an early <eos> ends a sample) / median step time over the steps
after WARMUP. Ratios are taken within a repeat (ours / trl of the same repeat), then mean ± std.

Configurations (identical settings on both sides):
  trl-off / ours-off   lmbda 0: the data's completions
  trl-on  / ours-on    lmbda 1: the student's samples, 32 new tokens (T 0.9, top_p 0.95, top_k 0, KV cache)
  both: use_uld_loss with extended (byte-offset) alignment, merge "observed", skip the <eos> on both
  sides, CE weight 0, distillation weight 1, loss temperature 1, seq_kd off, num_generations 1,
  gradient_accumulation_steps 1, beta 0.5 (used by the hybrid only), and
  *hybrid loss off* (uld_use_hybrid_loss=False, TRL's default / hybrid=False): ULD's sorted L1 over
  every logit of both sides (4,096 against 258, zero-padded), the distance GOLD falls back on for
  what two vocabularies do not share. Why not the hybrid by default: on this pair every one of the
  teacher's 258 ids is a token string of the student's BPE (its byte alphabet and <pad>/<eos>), so
  the adaptive weights are w_m = 258/258 = 1 and w_u = 0 and the sorted part is empty on both sides
  (TRL and ours skip it): the hybrid is a JSD over the 258 shared ids and leaves the sort path
  unmeasured. `--hybrid` runs it (uld_use_hybrid_loss=True / hybrid=True, adaptive weights, shared
  ids by equal token strings: TRL's rule, our vocab_match "string") and writes
  lm_vs_trl_gold_hybrid.{md,json} instead.

Mismatches that remain (TRL 1.16.0 trl/experimental/gold/gold_trainer.py against
src/anydistill/lm/methods/gold.py and lm/paired.py, lm/cross_tokenizer.py, data/paired_text.py):
  - Logit shift. TRL's "observed" strategy slices the logits *at* the answer positions
    (`student_logits[i, start:start + size]`), i.e. row t, which predicts token t + 1, stands for
    token t, and a merged group multiplies in `probs[t, y_t]`; ours scores token t with row t - 1, the
    distribution that predicts it (`GOLD.groups`/`GOLD.merged`). TRL's other strategy, "bayesian",
    shifts but merges with the last token's distribution, also not ours. Same work; values differ by
    design. The parity point shows that TRL's loss on logits shifted by one position equals ours.
  - Normalisation. TRL averages each row's groups (JSD "batchmean" over the row's groups, sorted L1
    summed / the row's group count), then the rows (a row without a group counts as 0); ours averages
    over all the step's groups (`step_loss` over the group count). Equal when every row has the same
    number of groups; the parity point reports both of ours.
  - skip_eos. TRL drops each row's last completion token whatever it is (`size - 1`); ours drops the
    group of a final <eos> only. Off-policy every row ends with <eos> (identical); on-policy a sample
    that runs to max_completion_length without <eos> loses its last token in TRL, not in ours. With
    this student no sample ends early (checked on 128 prompts: none), so on-policy TRL scores 31
    groups per row and ours 32 (ours does 1/32 more loss work).
  - Teacher tokenisation. TRL re-tokenises every step's prompts and completions for the teacher inside
    compute_loss (`build_teacher_inputs_from_texts`, in the timed step, off- and on-policy); ours
    tokenises the data's rows for the teacher once at set-up (PairedText, before the first step) and
    carries only on-policy samples per step (`TokenizerPair.carry`, timed). A design difference the
    off-policy ratio measures, like the cache of benchmarks/lm_vs_trl.py.
  - Teacher rows. TRL right-pads the teacher's rows to the batch's longest; ours left-pads the prompts
    to the split's longest and the completions to the split's longest (off-policy) or the batch's
    (on-policy). With rows of one character count the widths are equal (reported in the results).
  - On-policy text handed to the teacher. TRL decodes the sample (`skip_special_tokens=False`: an
    invalid UTF-8 byte becomes U+FFFD, 3 teacher bytes; a sampled <eos> becomes the text "<eos>", which
    the teacher reads as its <eos>, and TRL appends another); ours carries the bytes up to the first
    invalid one (`TokenizerPair.readable`) and reads the student's <eos> as the teacher's. Does not
    arise with this student (128 samples checked: all ASCII, none cut, no <eos>).
  - Row order. TRL's RepeatSampler always shuffles (seeded); ours shuffles with its own sampler: the
    same rows in another order (every row has the same lengths, so the same work per step).
  - Order of the forwards. TRL runs the student's forward, then the teacher's (no_grad); ours the
    teacher's (inference_mode), then the student's (see benchmarks/lm_vs_trl.py on allocator churn).
  - Generation. TRL samples through `unwrap_model_for_generation` with its GenerationConfig; ours with
    `model.generate` (lm/paired.py `sample`); same temperature, top_p, top_k 0, max_new_tokens, eos,
    KV cache. The sampled texts differ (other RNG streams), so on-policy work matches in expectation.
  - Logging. TRL accumulates the matched/unmatched parts with `.item()` every step; ours logs through
    Lightning's `self.log` every step (no logger attached on either side).

Parity point (`--parity`, one process, both libraries, 1 thread; runs first in every mode): on the
first 8 rows (off-policy, identical text), TRL's loss as shipped (compute_loss), TRL's loss on logits
shifted by one position (ULDLoss on `cat(logits[:, :1], logits[:, :-1])` of both models: the causal
alignment), ours as the method computes it (mean over the step's groups) and ours with TRL's
normalisation (mean over rows of each row's mean): the shifted TRL loss equals ours with TRL's
normalisation, and so do their gradients, to 1e-5 (relative; in practice the gradients agree bit for
bit). TRL as shipped differs by design (its gradient is also reported, as a control that the
comparison can fail).

Run:   OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lm_vs_trl_gold.py   (2 threads, nothing else running; 10 to 15
       minutes: set-up about 45 s, parity 10 s, 20 children of about 10 s start-up plus 30 steps each).
       Writes benchmarks/results/lm_vs_trl_gold.{md,json}; with --hybrid, lm_vs_trl_gold_hybrid.{md,json}.
Smoke: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_vs_trl_gold.py --smoke [--hybrid]   (1 thread, 4 steps,
       1 repeat, plus the parity point; prints the ratios, writes nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS, WARMUP, REPEATS, THREADS = 30, 5, 3, 2
BATCH, PROMPT, COMPLETION, LR = 32, 8, 32, 3e-3  # COMPLETION: student tokens with the <eos> (= max_completion_length)
BETA, TEMPERATURE, TOP_P = 0.5, 0.9, 0.95
PARITY_ROWS = 8
STUDENT = {"n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 64}
TEACHER = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 1024}
STUDENT_VOCAB, TEACHER_VOCAB = 4096, 258  # exactly each tokenizer's ids (no padded logits: see the docstring)
PRETRAIN_STEPS, PRETRAIN_BATCH = 150, 32
CONFIGS = {"trl-off": 0.0, "ours-off": 0.0, "trl-on": 1.0, "ours-on": 1.0}  # configuration -> lmbda
SETTINGS = {"threads": THREADS, "steps": STEPS, "hybrid": False}  # the child's, from the parent's command line


# -- set-up (the parent) -----------------------------------------------------------------------------


def byte_tokenizer():
    """One id per byte (2 + byte), <pad> 0, <eos> 1; ByteLevel pre-tokenizer and decoder, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from anydistill.data.token_bytes import byte_level_alphabet
    from anydistill.data.tokenizers import EOS, EOS_ID, PAD, PAD_ID

    vocab = {PAD: PAD_ID, EOS: EOS_ID, **{piece: 2 + byte for piece, byte in byte_level_alphabet().items()}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD, EOS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, bos_token=EOS)


def text_rows(tokenizer, stream) -> tuple[list[dict], dict]:
    """Prompt/completion rows cut from the BPE ``stream`` (see the docstring); and their lengths."""
    import collections

    ids = stream.tolist()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    word = lambda i: pieces[ids[i]].startswith("Ġ") and len(pieces[ids[i]]) > 1 and pieces[ids[i]][1].isalpha()
    n = COMPLETION - 1  # completion tokens before the <eos>
    starts = [i for i in range(PROMPT, len(ids) - n) if word(i) and pieces[ids[i - PROMPT]].startswith("Ġ")
              and pieces[ids[i + n]].startswith("Ġ") and not {0, 1} & set(ids[i - PROMPT : i + n])]
    texts = [(tokenizer.decode(ids[i - PROMPT : i]), tokenizer.decode(ids[i : i + n])) for i in starts]
    keep = [(i, p, c) for i, (p, c) in zip(starts, texts) if (p + c).isascii()]
    lengths = collections.Counter((len(p), len(c)) for _, p, c in keep).most_common(1)[0][0]
    keep = [(i, p, c) for i, p, c in keep if (len(p), len(c)) == lengths]
    encode = lambda xs: tokenizer(xs, add_special_tokens=False)["input_ids"]
    apart_p, apart_c = encode([p for _, p, _ in keep]), encode([c for _, _, c in keep])
    joined = encode([p + c for _, p, c in keep])
    rows = [{"prompt": p, "completion": c} for (i, p, c), a, b, j in zip(keep, apart_p, apart_c, joined)
            if a == ids[i - PROMPT : i] and b == ids[i : i + n] and j == ids[i - PROMPT : i + n]]
    rows = rows[: len(rows) // BATCH * BATCH]
    if len(rows) < 4 * BATCH:
        raise SystemExit(f"only {len(rows)} rows of {lengths} characters: too few for the benchmark")
    return rows, {"prompt_chars": lengths[0], "completion_chars": lengths[1], "rows": len(rows)}


def pretrain(model, stream, block: int, seed: int) -> float:
    """PRETRAIN_STEPS steps of next-token CE on random blocks of ``stream``; the last loss."""
    import torch

    torch.manual_seed(seed)
    count = stream.numel() // block
    blocks = stream[: count * block].view(count, block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    for _ in range(PRETRAIN_STEPS):
        x = blocks[torch.randint(count, (PRETRAIN_BATCH,))]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def prepare(work: Path, threads: int) -> dict:
    import torch

    from anydistill.data.shakespeare import texts_by_split, tokenized_corpus
    from anydistill.data.tokenizers import EOS_ID
    from anydistill.models.causal_lm import gpt2_lm

    torch.set_num_threads(threads)
    student_tokenizer, streams = tokenized_corpus("bpe", STUDENT_VOCAB)
    teacher_tokenizer = byte_tokenizer()
    rows, lengths = text_rows(student_tokenizer, streams["train"])
    plays = [text for _, text in texts_by_split()["train"]]
    byte_stream = torch.cat([t for text in plays for t in (torch.tensor(list(text.encode()), dtype=torch.long) + 2,
                                                           torch.tensor([EOS_ID]))])
    student = gpt2_lm(vocab_size=STUDENT_VOCAB, **STUDENT)
    teacher = gpt2_lm(vocab_size=TEACHER_VOCAB, **TEACHER)
    losses = {"student_ce": pretrain(student, streams["train"], 48, 0), "teacher_ce": pretrain(teacher, byte_stream, 128, 1)}
    for name, model, tokenizer in (("student", student, student_tokenizer), ("teacher", teacher, teacher_tokenizer)):
        model.eval().save_pretrained(work / name)
        tokenizer.save_pretrained(work / name)
    write = lambda path, items: path.write_text("".join(json.dumps(r) + "\n" for r in items))
    write(work / "train.jsonl", rows)
    write(work / "held_out.jsonl", rows[:BATCH])  # val/test of ours (never evaluated): no training row is held out
    return {**lengths, **losses}


# -- the children ------------------------------------------------------------------------------------


def load_models(work: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(work / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(work / "student")
    return teacher, student, AutoTokenizer.from_pretrained(work / "student")


def rows_of(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "train.jsonl").read_text().splitlines()]


def child(config: str, work: Path, seed: int) -> dict:
    import torch

    torch.set_num_threads(SETTINGS["threads"])
    torch.manual_seed(seed)
    teacher, student, tokenizer = load_models(work)
    times: list[float] = []
    widths: dict = {}
    if config.startswith("trl"):
        run_trl(CONFIGS[config], teacher, student, tokenizer, work, times, seed, widths)
    else:
        run_ours(CONFIGS[config], teacher, student, work, times, seed, widths)
    if torch.get_num_threads() != SETTINGS["threads"]:
        raise SystemExit(f"{config} ended with {torch.get_num_threads()} threads instead of {SETTINGS['threads']}.")
    from anydistill.core.memory import peak_rss_mib

    return {"config": config, "step_seconds": times, "max_rss_mb": peak_rss_mib(), "widths": widths}


def trl_config(output_dir: str, lmbda: float, seed: int, work: Path, **overrides):
    from trl.experimental.gold import GOLDConfig

    settings = dict(  # noqa: C408  (GOLDConfig keyword arguments)
        output_dir=output_dir, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_generations=1,
        lmbda=lmbda, beta=BETA, temperature=TEMPERATURE, top_p=TOP_P, top_k=0, seq_kd=False,
        max_completion_length=COMPLETION, max_length=PROMPT + COMPLETION,
        use_uld_loss=True, use_extended_uld=True, uld_token_merge_strategy="observed", uld_use_hybrid_loss=SETTINGS["hybrid"],
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0, uld_teacher_temperature=1.0,
        uld_skip_student_eos=True, uld_skip_teacher_eos=True, teacher_tokenizer_name_or_path=str(work / "teacher"),
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", weight_decay=0.0,
        # TRL's defaults are bf16 autocast, gradient checkpointing (which also turns the KV cache off in its
        # generation) and clipping at norm 1: the protocol's fp32, no checkpointing, no clipping (as ours).
        bf16=False, fp16=False, gradient_checkpointing=False, max_grad_norm=0.0, disable_dropout=True,
        logging_steps=10_000, save_strategy="no", report_to="none", dataloader_num_workers=0, dataloader_drop_last=True,
        use_cpu=True, disable_tqdm=True, seed=seed,
    )
    settings.update(overrides)
    return GOLDConfig(**settings)


def run_trl(lmbda, teacher, student, tokenizer, work, times, seed, widths) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gold import GOLDTrainer

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.began)

    args = trl_config(tempfile.mkdtemp(), lmbda, seed, work, max_steps=SETTINGS["steps"])
    trainer = GOLDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows_of(work)),
                       processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()


def paired_data(work: Path, batch: int, shuffle: bool, seed: int):
    from anydistill.data.paired_text import PairedLMDataset

    held_out = str(work / "held_out.jsonl")
    return PairedLMDataset(tokenizer=str(work / "student"), teacher_tokenizer=str(work / "teacher"), train=str(work / "train.jsonl"),
                           val=held_out, test=held_out, format="prompt-completion", block_size=PROMPT + COMPLETION,
                           prompt_tokens=PROMPT, batch_size=batch, eval_limit=8, shuffle=shuffle, seed=seed)


def our_method(student, teacher, lmbda: float):
    from anydistill.core.recipe import OptimizerSpec
    from anydistill.core.teacher import Teacher
    from anydistill.lm.methods.gold import GOLD

    return GOLD(student, Teacher(teacher, name="bench-teacher"), OptimizerSpec(name="adamw", lr=LR, schedule="constant"),
                lmbda=lmbda, beta=BETA, temperature=TEMPERATURE, top_p=TOP_P, seq_kd=False, hybrid=SETTINGS["hybrid"], vocab_match="string",
                crossentropy_weight=0.0, distillation_weight=1.0, skip_eos=True)


def lightning_fit(method, datamodule, steps: int, callbacks=()) -> None:
    import lightning as L

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                        callbacks=list(callbacks))
    trainer.fit(method, datamodule=datamodule)


def run_ours(lmbda, teacher, student, work, times, seed, widths) -> None:
    import lightning as L

    class Clock(L.Callback):
        def on_train_batch_start(self, *args):
            self.began = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.began)

    datamodule = paired_data(work, BATCH, shuffle=True, seed=seed)
    lightning_fit(our_method(student, teacher, lmbda), datamodule, SETTINGS["steps"], [Clock()])
    widths["student"] = int(datamodule.split("train")[0].shape[1])
    widths["teacher_data"] = int(datamodule.paired["train"]["teacher_input_ids"].shape[1])


# -- the parity point ----------------------------------------------------------------------------------


def our_parts(method, batch) -> dict:
    """Our loss on ``batch`` from the method's own pieces, with both normalisations, and the gradient of
    the one with TRL's (mean over rows of each row's mean over its groups)."""
    import torch

    from anydistill.lm.cross_tokenizer import hybrid_distance, sorted_l1
    from anydistill.lm.paired import logits_of, teacher_logits_of

    student, teacher, source = method.sides(batch)
    target = teacher_logits_of(method.teacher.model, teacher.ids, teacher.attention)
    logits = logits_of(method.student, student.ids, student.attention)
    s_groups, t_groups = method.groups(student, teacher)
    s_width, t_width = getattr(method, "widths", (logits.shape[-1], target.shape[-1]))  # logits that stand for text
    q = method.merged(logits[..., :s_width], student.ids, s_groups)
    p = method.merged(target[..., :t_width], teacher.ids, t_groups).to(q.device)
    if method.overlap is not None:
        d, _, _ = hybrid_distance(q, p, method.overlap, beta=method.beta, matched_weight=method.matched_weight,
                                  unmatched_weight=method.unmatched_weight)
    else:
        d = sorted_l1(q, p)
    width = student.ids.shape[1] - 1
    row = torch.tensor([group[0] // width for group in s_groups])
    rows = student.ids.shape[0]
    per_row = torch.stack([d[row == b].mean() if (row == b).any() else d.sum() * 0.0 for b in range(rows)])
    by_rows = per_row.mean()
    params = dict(method.student.named_parameters())
    grads = torch.autograd.grad(by_rows, list(params.values()), allow_unused=True)
    return {"source": source, "groups": len(s_groups), "teacher_width": int(teacher.ids.shape[1]),
            "loss_groups": float(d.sum().detach() / len(s_groups)), "loss_rows": float(by_rows.detach()),
            "grad": {k: (g if g is not None else torch.zeros_like(v)).detach().clone() for (k, v), g in zip(params.items(), grads)}}


def parity(work: Path) -> dict:
    import copy

    import torch
    from datasets import Dataset
    from trl.experimental.gold import GOLDTrainer
    from trl.experimental.gold.gold_trainer import build_teacher_inputs_from_texts

    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher, student, tokenizer = load_models(work)
    rows = rows_of(work)[:PARITY_ROWS]

    # Ours: the method's first (off-policy) step on the first rows, in order; the pieces before its update.
    method = our_method(copy.deepcopy(student), teacher, 0.0)
    recorded: dict = {}
    step = method.training_step

    def recording(batch, batch_idx):
        first = not recorded
        if first:
            recorded.update(our_parts(method, batch))
        loss = step(batch, batch_idx)
        if first:
            recorded["method_loss"] = float(loss.detach())
        return loss

    method.training_step = recording
    lightning_fit(method, paired_data(work, PARITY_ROWS, shuffle=False, seed=0), 1)

    # TRL: its collator on the same rows, in order; compute_loss as shipped, then ULDLoss on shifted logits.
    trl_student = copy.deepcopy(student)
    args = trl_config(tempfile.mkdtemp(), 0.0, 0, work, per_device_train_batch_size=PARITY_ROWS)
    trainer = GOLDTrainer(model=trl_student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(PARITY_ROWS)])
    grads = lambda model: {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                           for k, p in model.named_parameters()}
    trainer.model.zero_grad(set_to_none=True)
    shipped_loss = trainer.compute_loss(trainer.model, inputs)
    shipped_loss.backward()
    shipped, shipped_grad = float(shipped_loss.detach()), grads(trainer.model)
    t_ids, t_labels, t_attention, t_offsets = build_teacher_inputs_from_texts(
        trainer.teacher_tokenizer, inputs["original_prompt_text"], inputs["original_completion_text"], use_extended_uld=True)
    s_logits = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
    with torch.no_grad():
        t_logits = teacher(input_ids=t_ids, attention_mask=t_attention).logits
    shift = lambda x: torch.cat([x[:, :1], x[:, :-1]], 1)
    shifted = trainer.uld_loss_fn(student_logits=shift(s_logits), teacher_logits=shift(t_logits), student_labels=inputs["labels"],
                                  teacher_labels=t_labels, student_input_ids=inputs["input_ids"], teacher_input_ids=t_ids,
                                  student_byte_offsets=inputs["byte_offsets"], teacher_byte_offsets=t_offsets)
    trainer.model.zero_grad(set_to_none=True)
    shifted.backward()
    trl_grad = grads(trainer.model)

    ours_grad = recorded.pop("grad")
    scale = max(float(g.abs().max()) for g in trl_grad.values())
    difference = lambda other: max(float((other[k] - ours_grad[k]).abs().max()) for k in other) / scale
    grad_diff = difference(trl_grad)
    out = {"rows": PARITY_ROWS, "ours_source": recorded["source"], "ours_groups": recorded["groups"],
           "teacher_width_trl": int(t_ids.shape[1]), "teacher_width_ours": recorded["teacher_width"],
           "trl_loss_as_shipped": shipped, "trl_loss_causal_shift": float(shifted.detach()),
           "ours_loss_method": recorded["method_loss"], "ours_loss_groups": recorded["loss_groups"],
           "ours_loss_trl_normalisation": recorded["loss_rows"], "grad_max_abs": scale,
           "rel_diff_grad_trl_shifted_vs_ours": grad_diff, "rel_diff_grad_trl_shipped_vs_ours": difference(shipped_grad)}
    out["rel_diff_loss_trl_shifted_vs_ours"] = abs(out["trl_loss_causal_shift"] - out["ours_loss_trl_normalisation"]) / abs(out["trl_loss_causal_shift"])
    out["holds"] = (out["rel_diff_loss_trl_shifted_vs_ours"] <= 1e-5 and grad_diff <= 1e-5
                    and abs(out["ours_loss_method"] - out["ours_loss_groups"]) <= 1e-5 * abs(out["ours_loss_groups"]))
    return out


# -- the parent ----------------------------------------------------------------------------------------


def spawn(args: list[str], threads: int) -> tuple[dict, float]:
    """Run this file as a child; its last stdout line (JSON) and its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 thread, 4 steps, 1 repeat, and the parity point; writes nothing")
    parser.add_argument("--parity", action="store_true", help="only the parity point")
    parser.add_argument("--hybrid", action="store_true",
                        help="the hybrid loss on both sides (JSD on shared ids + sorted L1 on the rest; see the docstring); "
                             "writes lm_vs_trl_gold_hybrid.{md,json}")
    args = parser.parse_args()
    threads, steps, repeats, warmup = (1, 4, 1, 1) if args.smoke else (THREADS, STEPS, REPEATS, WARMUP)
    work = Path(tempfile.mkdtemp(prefix="lm-vs-trl-gold-"))
    began = time.perf_counter()
    data = prepare(work, threads)
    print("prepared", json.dumps(data), f"{time.perf_counter() - began:.0f} s", flush=True)
    hybrid = str(int(args.hybrid))
    check, seconds = spawn(["--child-parity", str(work), hybrid], 1)
    print("parity", json.dumps(check), f"{seconds:.0f} s", flush=True)
    if args.parity:
        return
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for repeat in range(repeats):
        for config in CONFIGS:
            result, seconds = spawn(["--child", config, str(work), str(repeat), str(threads), str(steps), hybrid], threads)
            runs[config].append(result)
            print(repeat, config, f"median step {statistics.median(result['step_seconds'][warmup:]) * 1000:.1f} ms",
                  f"rss {result['max_rss_mb']:.0f} MB", f"widths {result['widths']}", f"child {seconds:.0f} s",
                  [round(s, 3) for s in result["step_seconds"]], flush=True)

    import lm_common as c

    tokens = BATCH * COMPLETION
    summary = {config: {"tokens_per_s": [tokens / statistics.median(r["step_seconds"][warmup:]) for r in results],
                        "max_rss_mb": [r["max_rss_mb"] for r in results]} for config, results in runs.items()}
    per_repeat = lambda a, b, key: [x / y for x, y in zip(summary[a][key], summary[b][key])]
    ratios = {}
    for kind in ("off", "on"):
        ratios[f"tokens/s ours-{kind} / trl-{kind}"] = per_repeat(f"ours-{kind}", f"trl-{kind}", "tokens_per_s")
        ratios[f"peak RSS ours-{kind} / trl-{kind}"] = per_repeat(f"ours-{kind}", f"trl-{kind}", "max_rss_mb")
    fmt = lambda values, digits=0: f"{c.mean_std(values)[0]:,.{digits}f} ± {c.mean_std(values)[1]:,.{digits}f}"
    if args.smoke:
        for name, values in ratios.items():
            print(name, fmt(values, 3))
        return
    versions, _ = spawn(["--child-versions"], 1)
    accepted = {kind: c.mean_std(ratios[f"tokens/s ours-{kind} / trl-{kind}"])[0] >= 1.0
                and c.mean_std(ratios[f"peak RSS ours-{kind} / trl-{kind}"])[0] <= 1.0 for kind in ("off", "on")}
    loss = (f"hybrid loss on (adaptive weights, shared ids by equal token strings: all {TEACHER_VOCAB} of the teacher's, so "
            f"w_m = 1, w_u = 0: a JSD(beta {BETA}) over them)" if args.hybrid else
            "hybrid loss off (ULD's sorted L1 over every logit of both sides)")
    setting = (
        f"Command: `OMP_NUM_THREADS={threads} .venv/bin/python benchmarks/lm_vs_trl_gold.py{' --hybrid' if args.hybrid else ''}`. "
        f"Student GPT-2 1L d64, byte-level "
        f"BPE-4k ({STUDENT_VOCAB} logits); teacher GPT-2 2L d64, byte tokenizer in ByteLevel form ({TEACHER_VOCAB} logits = its ids; "
        f"one token per character on these ASCII rows); both trained briefly first (final CE: student "
        f"{data['student_ce']:.2f}, teacher {data['teacher_ce']:.2f}). {data['rows']} prompt/completion text rows "
        f"({data['prompt_chars']} + {data['completion_chars']} characters, {PROMPT} + {COMPLETION - 1} student tokens + <eos>), "
        f"batch {BATCH}, max_completion_length {COMPLETION}, lr {LR} constant AdamW, fp32, {threads} threads, dropout off, "
        f"no clipping. use_uld_loss, extended alignment, merge 'observed', {loss}, T {TEMPERATURE}, top_p {TOP_P}, "
        f"skip <eos>, no CE. {steps} steps per child process, "
        f"the first {warmup} skipped, median step time; {repeats} interleaved repeats in fresh processes; ratios within a "
        f"repeat, mean ± std over repeats. Completion tokens per step: {tokens} (on-policy: nominal). Versions: {versions}."
    )
    verdict = ("Acceptance (tokens/s ratio >= 1.0 and peak RSS ratio <= 1.0, means): "
               + ", ".join(f"{kind}-policy {'met' if ok else 'NOT met'}" for kind, ok in accepted.items()) + ".")
    widths = runs["ours-off"][0]["widths"]
    layout = (
        f"Row widths (off-policy data): student {widths['student']} tokens on both sides; teacher {widths['teacher_data']} "
        f"tokens in ours (the split's longest), {check['teacher_width_trl']} in TRL's parity batch (the batch's longest); "
        "on-policy both pad the teacher's rows to the batch's longest sample."
    )
    agreement = (
        f"Parity point (the first {check['rows']} rows, off-policy, one process): TRL as shipped "
        f"{check['trl_loss_as_shipped']:.6f} (its logits row t stands for token t: differs by design; its gradient differs from "
        f"ours by {check['rel_diff_grad_trl_shipped_vs_ours']:.2f} of the largest); TRL on logits shifted by one position "
        f"{check['trl_loss_causal_shift']:.6f}; ours with TRL's normalisation (mean over rows of each row's mean) "
        f"{check['ours_loss_trl_normalisation']:.6f} (relative difference {check['rel_diff_loss_trl_shifted_vs_ours']:.1e}; "
        f"gradients {check['rel_diff_grad_trl_shifted_vs_ours']:.1e}); ours as the method computes it (mean over the step's "
        f"{check['ours_groups']} groups) {check['ours_loss_method']:.6f}: {'holds' if check['holds'] else 'DOES NOT HOLD'}."
    )
    pointer = ("Settings and every mismatch that remains: see the docstring of benchmarks/lm_vs_trl_gold.py (TRL's logit "
               "shift and per-row normalisation, its skip of the last token, its per-step teacher tokenisation, padding, "
               "row order, the order of the forwards, on-policy text handling).")
    lines = [
        "# GOLD throughput and memory next to TRL GOLDTrainer (identical tiny models, two tokenizers)",
        "",
        setting,
        "",
        "| configuration | completion tokens/s | peak RSS (MB) |",
        "|---|---:|---:|",
        *[f"| {config} | {fmt(s['tokens_per_s'])} | {fmt(s['max_rss_mb'])} |" for config, s in summary.items()],
        "",
        "| ratio (per repeat) | mean ± std over repeats |",
        "|---|---:|",
        *[f"| {name} | {fmt(values, 3)} |" for name, values in ratios.items()],
        "",
        verdict,
        "",
        layout,
        "",
        agreement,
        "",
        pointer,
        "",
    ]
    c.write_results("lm_vs_trl_gold_hybrid" if args.hybrid else "lm_vs_trl_gold", {"hybrid": args.hybrid, "versions": versions, "data": data, "summary": summary, "ratios": ratios, "parity": check,
                                       "widths": widths, "steps": steps, "warmup": warmup,
                                       "repeats": repeats, "threads": threads, "accepted": accepted}, "\n".join(lines))
    print("\n".join(lines))


def versions() -> dict:
    import lightning
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "lightning": lightning.__version__}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if len(sys.argv) > 1 and sys.argv[1].startswith("--child"):
        import warnings

        warnings.filterwarnings("ignore")
        if sys.argv[1] == "--child":
            SETTINGS.update(threads=int(sys.argv[5]), steps=int(sys.argv[6]), hybrid=bool(int(sys.argv[7])))
            out = child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        elif sys.argv[1] == "--child-parity":
            SETTINGS.update(hybrid=bool(int(sys.argv[3])))
            out = parity(Path(sys.argv[2]))
        else:
            out = versions()
        print(json.dumps(out))
    else:
        began = time.perf_counter()
        main()
        print(f"total {time.perf_counter() - began:.0f} s")
