"""MiniLLM throughput and peak memory next to TRL's MiniLLMTrainer, on identical tiny models, measured
interleaved in one run (the model of benchmarks/lm_vs_trl.py).

TRL. TRL 1.16 (the project's pin) has no MiniLLMTrainer; TRL 1.12.0 ships one under
trl/experimental/minillm. The TRL children import it from a separate target directory put first on
PYTHONPATH, so the project's environment is untouched:

    .venv/bin/pip install --no-deps --target /tmp/trl112 trl==1.12.0     # or the wheel file: .../trl-1.12.0-py3-none-any.whl
    # (--no-deps: it runs on the environment's torch / transformers / accelerate / datasets)

`--trl-path` (default /tmp/trl112) names that directory; the script refuses to run when the TRL it
imports there is not 1.12.x.

Protocol. Each (configuration, repeat) runs in a fresh child process, so its peak RSS (VmHWM from
/proc/self/status, via anydistill.core.memory.peak_rss_mib; `ru_maxrss` would read the parent's
high-water mark) is its own, in the order repeat 1: every configuration, repeat 2: every
configuration, ... (machine drift hits every configuration alike). A child loads the same saved
teacher (GPT-2 4L d128), student (1L d64) and char tokenizer and trains ROUNDS rounds on the same
prompts, in order: a round = 32 prompts of 16 characters (the first 16 tokens of the same training
blocks; TRL gets them as text, checked to re-tokenize to the same ids), one completion each of 48
tokens sampled at temperature 1 (top_k 0, top_p 1) with the KV cache, then PPO epochs x 4
minibatches of 8 rollouts, one AdamW update each (lr 3e-3 constant, gradient norm clipped at 1),
fp32, THREADS intra-op threads, dropout off, no logging or checkpoints. A round's time: ours, one
Lightning training step (step-begin to step-end hook: generation, scoring and every update); TRL,
its epochs x 4 optimizer steps (HF step-begin to step-end hooks; the first one generates and
scores; data loading excluded for both). Completion tokens/s = 32 x 48 / median round time over the
rounds after WARMUP (nominal: an early <eos> ends a completion's loss, not the batch's generation).

Configurations (the acceptance pair is trl / ours):
  trl        TRL 1.12 MiniLLMTrainer as shipped: num_generations 1, per_device_train_batch_size 8,
             steps_per_generation 4 (generation batch 32), num_iterations 1, max_completion_length
             48, temperature 1, top_k 0, top_p 1, bf16 off, gradient checkpointing off,
             max_grad_norm 1, optim adamw_torch (torch.optim.AdamW, as ours; TRL's default is the
             fused one), weight decay 0, constant lr, gamma 0, length normalisation, rkl_advantage
             and single_step_decomposition on (its defaults), beta 0 (no reference model), loss dapo,
             shuffle_dataset off (prompts in order, as ours)
  ours       anydistill minillm with TRL's objective: teacher_mixed_alpha 0 (the student's own
             samples), lm_coef 0 (no LM term), gamma 0, reward_scaling 1, reward_clip none,
             whiten_advantages off, ppo_epochs 1, ppo_minibatches 4, clip_range 0.2, max_grad_norm 1
  trl-ppo4   as trl with num_iterations 4 (4 PPO epochs, MiniLLM's default), which TRL 1.12 cannot
             run as shipped: its compute_loss writes the reverse-KL advantage (with its autograd
             graph) into GRPO's buffered minibatch, so the second epoch over a minibatch adds it
             again and fails with "Trying to backward through the graph a second time". The
             benchmark's subclass hands compute_loss a shallow copy of the minibatch (nothing else
             changes)
  ours-ppo4  ours with ppo_epochs 4
  ours-recipe  (for information, no TRL counterpart) the shipped recipe's MiniLLM, 4 epochs:
             teacher-mixed sampling alpha 0.2, gamma 1, reward scaling 0.5, whitening, LM term
             (kd_ratio 0.5) on the same rows' full blocks

Mismatches that remain:
  - TRL recomputes the teacher's logits at every update (no_grad) and runs the student twice per
    update (MiniLLM's loss, then GRPO's loss recomputes the log-probs and entropies); ours scores a
    round once (1 teacher + 1 student forward over its 32 rollouts, no grad) and runs the student
    once per update. This is the design difference the ratios measure (with 1 epoch the teacher
    work is the same: 4 forwards of 8 rows against 1 of 32).
  - TRL computes its rewards log p - log q from the *current* student, with gradient (its advantage
    is not detached: the gradient gets an extra (1/N) sum_t rho_t grad log q(y_t), zero in
    expectation on-policy); ours (and the official code) fix them at the round's sampling policy.
    `--parity` checks this exactly on fixed samples.
  - TRL's single-step and advantage masks are `completion_ids != -100`, i.e. every position,
    padding after an early <eos> included; ours stop at the first <eos> (as GRPO's own loss mask).
  - TRL splits a round's rollouts into minibatches once (GRPO's buffer) and replays the same split
    every epoch; ours draws a new split every epoch.
  - TRL logs metrics every update (GRPO gathers them); ours logs per round.

Parity point (`--parity`, one process, both libraries, 1 thread): on the same 8 student samples (no
early <eos>), one update at theta_old with gamma 0, no reward scaling or whitening: the loss values
agree, and TRL's gradient equals ours plus the gradient of (1/N) sum_t log q_theta(y_t) (the
undetached advantage), to 1e-5.

Run: python benchmarks/lm_vs_trl_minillm.py   (2 threads: nothing else running; about 7 minutes after the
teacher exists). Smoke: python benchmarks/lm_vs_trl_minillm.py --smoke (1 thread, 3 rounds, 1 repeat,
plus --parity; writes nothing).
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

ROUNDS, WARMUP, REPEATS, THREADS = 10, 2, 3, 2
ROLLOUTS, MINIBATCHES, PROMPT, BLOCK, LR = 32, 4, 16, 64, 3e-3
# configuration -> PPO epochs per round (TRL's num_iterations); every round has MINIBATCHES minibatches per epoch.
CONFIGS = {"trl": 1, "ours": 1, "trl-ppo4": 4, "ours-ppo4": 4, "ours-recipe": 4}
TRL_PATH = "/tmp/trl112"
SETTINGS = {"threads": THREADS, "rounds": ROUNDS, "warmup": WARMUP}  # the child's, overridden by --smoke


def child(config: str, model_dir: Path, seed: int) -> dict:
    import torch

    torch.set_num_threads(SETTINGS["threads"])
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(model_dir / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(model_dir / "student")
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "teacher")
    data = torch.load(model_dir / "blocks.pt")[: ROLLOUTS * SETTINGS["rounds"]]
    times: list[float] = []
    epochs = CONFIGS[config]
    if config.startswith("trl"):
        import trl

        if not trl.__version__.startswith("1.12"):
            raise SystemExit(f"the TRL child imported trl {trl.__version__} from {trl.__file__}, not 1.12: see the docstring")
        run_trl(teacher, student, tokenizer, data, times, seed, epochs)
        per_round = epochs * MINIBATCHES  # optimizer steps of one round; the first generates and scores
        rounds = [sum(times[i : i + per_round]) for i in range(0, len(times), per_round)]
    else:
        run_ours(config, teacher, student, data, times, model_dir, epochs)
        rounds = times
    if torch.get_num_threads() != SETTINGS["threads"]:
        raise SystemExit(f"{config} ended with {torch.get_num_threads()} threads instead of {SETTINGS['threads']}.")
    from anydistill.core.memory import peak_rss_mib

    return {"config": config, "round_seconds": rounds, "max_rss_mb": peak_rss_mib()}


def trl_config(output_dir: str, seed: int, epochs: int, **overrides):
    from trl.experimental.minillm import MiniLLMConfig

    settings = dict(
        output_dir=output_dir, per_device_train_batch_size=ROLLOUTS // MINIBATCHES, num_generations=1,
        steps_per_generation=MINIBATCHES, num_iterations=epochs, gradient_accumulation_steps=1,
        max_completion_length=BLOCK - PROMPT, temperature=1.0, top_k=0, top_p=1.0, kd_temperature=1.0,
        gamma=0.0, length_normalization=True, rkl_advantage=True, single_step_decomposition=True, beta=0.0,
        epsilon=0.2, loss_type="dapo", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, shuffle_dataset=False, disable_dropout=True,
        # TRL's defaults are bf16 autocast and gradient checkpointing (which also turns the KV cache off
        # in generation): the protocol's fp32, no checkpointing, as ours.
        bf16=False, fp16=False, gradient_checkpointing=False,
        logging_steps=10_000, save_strategy="no", report_to="none", dataloader_num_workers=0, use_cpu=True,
        disable_tqdm=True, seed=seed,
    )
    settings.update(overrides)
    return MiniLLMConfig(**settings)


def trainer_class(epochs: int):
    """TRL's MiniLLMTrainer; for epochs > 1, a subclass that hands compute_loss a copy of the
    buffered minibatch: TRL 1.12 writes its reverse-KL advantage (with its graph) into the GRPO
    buffer's dict, so the second epoch over that minibatch adds it again and backpropagates through
    the freed graph of the first ("Trying to backward through the graph a second time")."""
    from trl.experimental.minillm import MiniLLMTrainer

    if epochs == 1:
        return MiniLLMTrainer

    class CopyingMiniLLMTrainer(MiniLLMTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, dict(inputs), return_outputs, num_items_in_batch)

    return CopyingMiniLLMTrainer


def run_trl(teacher, student, tokenizer, data, times, seed, epochs) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback

    prompts = [tokenizer.decode(ids[:PROMPT]) for ids in data]
    encoded = [tokenizer(text)["input_ids"] for text in prompts]
    if any(e != ids[:PROMPT].tolist() for e, ids in zip(encoded, data)):
        raise SystemExit("the tokenizer does not round-trip the prompts: TRL would see other token ids than ours")

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.began)

    args = trl_config(tempfile.mkdtemp(), seed, epochs, max_steps=SETTINGS["rounds"] * epochs * MINIBATCHES)
    trainer = trainer_class(epochs)(model=student, teacher_model=teacher, args=args,
                             train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                             processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()


def our_method(config: str, student, teacher, epochs: int, optimizer=None, **overrides):
    from anydistill.core.recipe import OptimizerSpec
    from anydistill.core.teacher import Teacher
    from anydistill.lm.methods.minillm import MiniLLM

    optimizer = optimizer or OptimizerSpec(name="adamw", lr=LR, schedule="constant")
    common = dict(ppo_epochs=epochs, ppo_minibatches=MINIBATCHES, clip_range=0.2, temperature=1.0, kd_temperature=1.0,
                  max_grad_norm=1.0, rkl_advantage=True, single_step_decomposition=True, length_normalization=True)
    if config != "ours-recipe":  # TRL's objective
        settings = dict(teacher_mixed_alpha=0.0, lm_coef=0.0, gamma=0.0, reward_scaling=1.0, reward_clip=None,
                        whiten_advantages=False)
    else:  # the recipe's (recipes/shakespeare/minillm.yaml)
        settings = dict(teacher_mixed_alpha=0.2, lm_coef=1.0, kd_ratio=0.5, gamma=1.0, reward_scaling=0.5,
                        reward_clip=100.0, whiten_advantages=True)
    return MiniLLM(student, Teacher(teacher, name="bench-teacher"), optimizer, **{**common, **settings, **overrides})


def blocks_data(data, model_dir: Path, batch: int):
    """The saved blocks, in order, with the saved tokenizer (the corpus itself is never loaded)."""
    import torch

    from anydistill.data.shakespeare import ShakespeareData

    class Blocks(ShakespeareData):
        def setup(self, stage=None):
            if self.splits:
                return
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_dir / "teacher")
            mask = torch.ones_like(data, dtype=torch.bool)
            mask[:, :PROMPT] = False
            self.splits = {name: (data, mask) for name in ("train", "val", "test")}

    return Blocks(block_size=BLOCK, prompt_tokens=PROMPT, batch_size=batch, shuffle=False, eval_limit=8)


def lightning_fit(method, datamodule, rounds: int, callbacks=()):
    import lightning as L

    trainer = L.Trainer(max_steps=rounds * method.ppo_epochs * method.ppo_minibatches, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, callbacks=list(callbacks))
    trainer.fit(method, datamodule=datamodule)
    return trainer


def run_ours(config, teacher, student, data, times, model_dir, epochs) -> None:
    import lightning as L

    class Clock(L.Callback):
        def on_train_batch_start(self, *args):
            self.began = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.began)

    lightning_fit(our_method(config, student, teacher, epochs), blocks_data(data, model_dir, ROLLOUTS), SETTINGS["rounds"], [Clock()])


def parity(model_dir: Path) -> dict:
    """One update at theta_old on the same 8 samples: loss values and gradients of TRL and ours."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.minillm import MiniLLMTrainer

    from anydistill.core.recipe import OptimizerSpec
    from anydistill.lm.common import generate

    torch.set_num_threads(1)
    teacher = AutoModelForCausalLM.from_pretrained(model_dir / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(model_dir / "student")
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "teacher")
    data = torch.load(model_dir / "blocks.pt")[:64]
    torch.manual_seed(0)
    ids, mask = generate(student, data[:, :PROMPT], BLOCK - PROMPT, do_sample=True, eos_token_id=1, pad_token_id=0)
    full = mask[:, PROMPT:].all(1)  # TRL counts padding after an early <eos>: compare on complete rows only
    ids, mask, data = ids[full][:8], mask[full][:8], data[full][:8]
    n = int(mask.sum())

    # TRL: its compute_loss on the buffered inputs GRPO would hand it (dummy reward: advantage 0 + reverse-KL advantage).
    trl_student = copy.deepcopy(student)
    args = trl_config(tempfile.mkdtemp(), 0, 1, per_device_train_batch_size=8, steps_per_generation=1, max_grad_norm=0.0)
    trainer = MiniLLMTrainer(model=trl_student, teacher_model=teacher, args=args,
                             train_dataset=Dataset.from_list([{"prompt": "x"}] * 8), processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = {"prompt_ids": ids[:, :PROMPT], "prompt_mask": torch.ones_like(ids[:, :PROMPT]),
              "completion_ids": ids[:, PROMPT:], "completion_mask": mask[:, PROMPT:].long(),
              "advantages": torch.zeros(ids.shape[0]), "num_items_in_batch": torch.tensor(float(n))}
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()
    trl_grad = {k: p.grad.detach().clone() for k, p in trainer.model.named_parameters()}

    # The undetached advantage's extra gradient: d/dtheta (1/N) sum_t log q_theta(y_t).
    extra_model = copy.deepcopy(student).train()
    logits = extra_model(input_ids=ids).logits[:, PROMPT - 1 : -1]
    logq = torch.log_softmax(logits, -1).gather(-1, ids[:, PROMPT:, None]).squeeze(-1)
    (logq[mask[:, PROMPT:]].sum() / n).backward()
    extra = {k: p.grad.detach().clone() for k, p in extra_model.named_parameters()}

    # Ours: one SGD step of lr 1 on the same rollouts moves each weight by -gradient.
    ours_student = copy.deepcopy(student)
    before = {k: v.detach().clone() for k, v in ours_student.named_parameters()}
    method = our_method("ours", ours_student, teacher, 1, OptimizerSpec(name="sgd", lr=1.0, momentum=0.0, schedule="constant"),
                        ppo_minibatches=1, max_grad_norm=None)
    method.rollouts = lambda prompts: (ids, mask)
    losses = []
    update_loss = method.update_loss

    def recording(*a, **k):
        loss, parts = update_loss(*a, **k)
        losses.append(float(loss.detach()))
        return loss, parts

    method.update_loss = recording
    lightning_fit(method, blocks_data(data, model_dir, 8), 1)
    ours_grad = {k: before[k] - p.detach() for k, p in ours_student.named_parameters()}

    scale = max(float(g.abs().max()) for g in trl_grad.values())
    worst = lambda f: max(float((trl_grad[k] - f(k)).abs().max()) for k in trl_grad) / scale
    out = {"rows": int(ids.shape[0]), "tokens": n, "trl_loss": float(trl_loss.detach()), "ours_loss": losses[0],
           "grad_max_abs": scale, "rel_diff_grad_trl_vs_ours": worst(lambda k: ours_grad[k]),
           "rel_diff_grad_trl_vs_ours_plus_extra": worst(lambda k: ours_grad[k] + extra[k])}
    out["holds"] = (abs(out["trl_loss"] - out["ours_loss"]) <= 1e-5 * abs(out["trl_loss"])
                    and out["rel_diff_grad_trl_vs_ours_plus_extra"] <= 1e-5)
    return out


def prepare(work: Path) -> None:
    import lm_common as c
    import torch

    from anydistill.data.shakespeare import ShakespeareData

    c.teacher().model.save_pretrained(work / "teacher")
    c.student(0).save_pretrained(work / "student")
    datamodule = ShakespeareData(**c.DATA)
    datamodule.setup()
    datamodule.tokenizer.save_pretrained(work / "teacher")
    torch.save(datamodule.split("train")[0][: ROLLOUTS * ROUNDS].clone(), work / "blocks.pt")


def spawn(args: list[str], trl_path: str | None, threads: int) -> dict:
    """Run this file as a child; ``trl_path`` first on its PYTHONPATH (TRL 1.12) for the children that import TRL."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    if trl_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([trl_path, *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 thread, 3 rounds, 1 repeat, and --parity; writes nothing")
    parser.add_argument("--parity", action="store_true", help="only the parity point")
    parser.add_argument("--trl-path", default=TRL_PATH, help="the directory trl 1.12 was installed into (--target)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lm-vs-trl-minillm-"))
    prepare(work)
    threads, rounds, repeats, warmup = (1, 3, 1, 1) if args.smoke else (THREADS, ROUNDS, REPEATS, WARMUP)
    # The parity point runs first in every mode (1 thread, one process with both libraries).
    check = spawn(["--child-parity", str(work)], args.trl_path, 1)
    print("parity", json.dumps(check), flush=True)
    if args.parity:
        return
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for repeat in range(repeats):
        for config in CONFIGS:
            result = spawn(["--child", config, str(work), str(repeat), str(threads), str(rounds)],
                           args.trl_path if config.startswith("trl") else None, threads)
            runs[config].append(result)
            print(repeat, config, f"median round {statistics.median(result['round_seconds'][warmup:]):.3f} s",
                  f"rss {result['max_rss_mb']:.0f} MB", [round(s, 3) for s in result["round_seconds"]], flush=True)

    import lm_common as c

    tokens = ROLLOUTS * (BLOCK - PROMPT)
    summary = {config: {"tokens_per_s": [tokens / statistics.median(r["round_seconds"][warmup:]) for r in results],
                        "max_rss_mb": [r["max_rss_mb"] for r in results]} for config, results in runs.items()}
    per_repeat = lambda a, b, key: [x / y for x, y in zip(summary[a][key], summary[b][key])]
    ratios = {"tokens/s ours / trl": per_repeat("ours", "trl", "tokens_per_s"),
              "peak RSS ours / trl": per_repeat("ours", "trl", "max_rss_mb"),
              "tokens/s ours-ppo4 / trl-ppo4": per_repeat("ours-ppo4", "trl-ppo4", "tokens_per_s"),
              "peak RSS ours-ppo4 / trl-ppo4": per_repeat("ours-ppo4", "trl-ppo4", "max_rss_mb"),
              "tokens/s ours-recipe / trl-ppo4 (information)": per_repeat("ours-recipe", "trl-ppo4", "tokens_per_s")}
    fmt = lambda values, digits=0: f"{c.mean_std(values)[0]:,.{digits}f} ± {c.mean_std(values)[1]:,.{digits}f}"
    if args.smoke:
        for name, values in ratios.items():
            print(name, fmt(values, 3))
        return
    versions = spawn(["--child-versions"], args.trl_path, 1)
    command = "python benchmarks/lm_vs_trl_minillm.py" + (f" --trl-path {args.trl_path}" if args.trl_path != TRL_PATH else "")
    lines = [
        "# MiniLLM throughput and memory next to TRL 1.12 MiniLLMTrainer (identical tiny models)",
        "",
        f"Command: `{command}` (TRL 1.12.0 installed with `pip install --no-deps --target {args.trl_path}`, first on the "
        f"TRL children's PYTHONPATH). Teacher GPT-2 4L d128, student 1L d64, char vocabulary (96 logits); rounds of "
        f"{ROLLOUTS} prompts of {PROMPT} tokens, one {BLOCK - PROMPT}-token completion each (T = 1, top_k 0, top_p 1, KV cache), "
        f"then PPO epochs x {MINIBATCHES} minibatches of {ROLLOUTS // MINIBATCHES} (1 epoch: 'trl', 'ours'; 4 epochs: "
        f"'-ppo4', 'ours-recipe'), one AdamW update each; fp32, {threads} threads, "
        f"dropout off. {rounds} rounds per child process, the first {warmup} skipped, median round time; {repeats} "
        f"interleaved repeats in fresh processes; mean ± std over repeats. Versions: {versions}. Completion tokens per round: "
        f"{tokens} (nominal).",
        "",
        "| configuration | completion tokens/s | peak RSS (MB) |",
        "|---|---:|---:|",
        *[f"| {config} | {fmt(s['tokens_per_s'])} | {fmt(s['max_rss_mb'])} |" for config, s in summary.items()],
        "",
        "| ratio (per repeat) | mean ± std over repeats |",
        "|---|---:|",
        *[f"| {name} | {fmt(values, 3)} |" for name, values in ratios.items()],
        "",
        f"Parity point (same 8 samples, one update at theta_old, TRL's objective): loss TRL {check['trl_loss']:.6f}, ours "
        f"{check['ours_loss']:.6f}; max |gradient difference| / max |gradient|: {check['rel_diff_grad_trl_vs_ours']:.2e} as is, "
        f"{check['rel_diff_grad_trl_vs_ours_plus_extra']:.2e} once the gradient of TRL's undetached advantage, "
        f"(1/N) sum_t grad log q(y_t), is added to ours: {'holds' if check['holds'] else 'DOES NOT HOLD'}.",
        "",
        "Settings and the mismatches that remain: see the docstring of benchmarks/lm_vs_trl_minillm.py ('ours' runs TRL's "
        "objective: no teacher mixing, no LM term, gamma 0, no reward scaling or whitening; 'ours-recipe' is the shipped "
        "recipe's MiniLLM, for information).",
        "",
    ]
    c.write_results("lm_vs_trl_minillm", {"versions": versions, "summary": summary, "ratios": ratios, "parity": check,
                                          "rounds": rounds, "warmup": warmup, "repeats": repeats, "threads": threads},
                    "\n".join(lines))
    print("\n".join(lines))


def versions() -> dict:
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if len(sys.argv) > 1 and sys.argv[1].startswith("--child"):
        import warnings

        warnings.filterwarnings("ignore")
        if sys.argv[1] == "--child":
            SETTINGS.update(threads=int(sys.argv[5]), rounds=int(sys.argv[6]))
            out = child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        elif sys.argv[1] == "--child-parity":
            out = parity(Path(sys.argv[2]))
        else:
            out = versions()
        print(json.dumps(out))
    else:
        began = time.perf_counter()
        main()
        print(f"total {time.perf_counter() - began:.0f} s")
