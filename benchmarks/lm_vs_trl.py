"""Benchmark (e): training throughput and peak memory next to TRL's GKDTrainer, on identical tiny
models, measured interleaved in one run.

Each (configuration, repeat) runs in a fresh child process (so its peak RSS, VmHWM from /proc/self/status, is its own; `ru_maxrss`
would read the parent's peak: see anydistill.core.memory), in the
order repeat 1: all configurations, repeat 2: all configurations, ... (machine drift hits every
configuration alike). A child loads the same saved teacher, student and tokenizer, trains for
STEPS steps of batch 32 (16-character prompts, 48-character completions, fp32, THREADS intra-op threads, dropout
off, no checkpointing or logging) and reports each step's wall time, timed from the step-begin to
the step-end hook (data loading excluded for all). Completion tokens/s = completion tokens of a
step (32 x 48) / median step time over the steps after WARMUP.

Configurations:
  trl-off     TRL GKDTrainer, lmbda = 0 (dataset completions), beta = 0.5
  ours-off    anydistill gkd, lmbda = 0, beta = 0.5 (teacher online)
  bare-off    a bare PyTorch loop: teacher forward (no_grad), student forward, full-vocab JSD(0.5), AdamW step
  ours-cache  anydistill lm-kd, jsd beta = 0.5, alpha = 1, from a top-32 + tail cache (built before timing)
  trl-on      TRL GKDTrainer, lmbda = 1 (student generations with the KV cache), beta = 0.5
  ours-on     anydistill gkd, lmbda = 1, beta = 0.5
  trl-off-malloc  trl-off with glibc malloc told to keep freed memory (TUNED_MALLOC): a control that
              shows how much of TRL's gap is allocator churn (anydistill runs the teacher before the
              student's forward, which avoids most of it)

Run: python benchmarks/lm_vs_trl.py   (about 8 minutes after the teacher exists; nothing else running: it uses both cores)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS, WARMUP, REPEATS, BATCH, PROMPT, BLOCK, THREADS = 30, 5, 3, 32, 16, 64, 2
CONFIGS = ("trl-off", "ours-off", "bare-off", "ours-cache", "trl-on", "ours-on", "trl-off-malloc")
# glibc malloc settings that stop it from returning large freed buffers to the OS (and faulting them
# in again on the next step); the control row "trl-off-malloc" runs TRL with them.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1000000000"}
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def blocks(count: int):
    import lm_common as c

    ids, _ = c.data().split("train")
    return ids[:count]


def child(config: str, model_dir: Path, seed: int) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(model_dir / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(model_dir / "student")
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "teacher")
    data = torch.load(model_dir / "blocks.pt")[: BATCH * STEPS]
    times: list[float] = []
    extra: dict = {}
    if config.startswith("trl"):
        run_trl(config, teacher, student, tokenizer, data, times, seed)
    elif config == "bare-off":
        run_bare(teacher, student, data, times)
    else:
        extra = run_ours(config, teacher, student, data, times, seed, model_dir)
    if torch.get_num_threads() != THREADS:
        raise SystemExit(f"{config} ended with {torch.get_num_threads()} threads instead of {THREADS}: a configuration changed them.")
    # The child's own peak (VmHWM), not ru_maxrss: that one inherits the parent's high-water mark.
    from anydistill.core.memory import peak_rss_mib

    return {"config": config, "step_seconds": times, "max_rss_mb": peak_rss_mib(), **extra}


def run_trl(config, teacher, student, tokenizer, data, times, seed) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tokenizer.chat_template = CHAT_TEMPLATE
    rows = [{"messages": [{"role": "user", "content": tokenizer.decode(ids[:PROMPT])},
                          {"role": "assistant", "content": tokenizer.decode(ids[PROMPT:])}]} for ids in data]

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.began)

    args = GKDConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=3e-3,
        lmbda=1.0 if config == "trl-on" else 0.0, beta=0.5, temperature=0.9, max_new_tokens=BLOCK - PROMPT,
        max_length=BLOCK, logging_steps=10_000, save_strategy="no", report_to="none", dataloader_num_workers=0,
        use_cpu=True, disable_dropout=True, seed=seed, gradient_accumulation_steps=1, lr_scheduler_type="constant",
        disable_tqdm=True,
        # TRL's defaults are bf16 autocast and gradient checkpointing (which also turns the KV cache off
        # in its generation) and HF clips gradients at norm 1: set to the protocol's fp32, no checkpointing,
        # KV cache on, no clipping (as ours).
        bf16=False, fp16=False, gradient_checkpointing=False, max_grad_norm=0.0,
    )
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()


def run_bare(teacher, student, data, times) -> None:
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    mask = torch.zeros(BATCH, BLOCK - 1, dtype=torch.bool)
    mask[:, PROMPT - 1:] = True  # logits at positions >= P - 1 predict the completion tokens
    beta = 0.5
    for start in range(0, data.shape[0], BATCH):
        ids = data[start : start + BATCH]
        began = time.perf_counter()
        with torch.no_grad():
            t = F.log_softmax(teacher(input_ids=ids).logits[:, :-1][mask].float(), -1)
        s = F.log_softmax(student(input_ids=ids).logits[:, :-1][mask].float(), -1)
        m = torch.logsumexp(torch.stack([t + torch.log(torch.tensor(beta)), s + torch.log(torch.tensor(1 - beta))]), 0)
        loss = (beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)


def run_ours(config, teacher, student, data, times, seed, model_dir) -> dict:
    import lightning as L
    import torch

    from anydistill.core.recipe import OptimizerSpec
    from anydistill.core.teacher import Teacher
    from anydistill.lm.methods.gkd import GKD
    from anydistill.lm.methods.kd import LMKD
    from anydistill.data.shakespeare import ShakespeareData

    class Blocks(ShakespeareData):  # the same blocks as the other children, in order, with the saved tokenizer
        def setup(self, stage=None):  # (as in the TRL child, the corpus itself is never loaded)
            if self.splits:
                return
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_dir / "teacher")
            mask = torch.ones_like(data, dtype=torch.bool)
            mask[:, :PROMPT] = False
            self.splits = {name: (data, mask) for name in ("train", "val", "test")}

    datamodule = Blocks(block_size=BLOCK, prompt_tokens=PROMPT, batch_size=BATCH, shuffle=False, eval_limit=8)
    optimizer = OptimizerSpec(name="adamw", lr=3e-3, schedule="constant")
    wrapped = Teacher(teacher, name="bench-teacher")
    extra = {}
    if config == "ours-cache":
        cache = Path(tempfile.mkdtemp())
        method = LMKD(student, wrapped, optimizer, divergence="jsd", beta=0.5, alpha=1.0, topk=32, cache_dir=str(cache))
        began = time.perf_counter()
        datamodule.setup()
        from anydistill.lm.topk_cache import open_or_build_topk_cache
        from anydistill.data.tokenizers import tokenizer_fingerprint

        method.signals, _, _ = open_or_build_topk_cache(
            cache, wrapped, data, dataset_fingerprint=datamodule.fingerprint("train"),
            tokenizer_fingerprint=tokenizer_fingerprint(datamodule.tokenizer), k=32, tail=True, vocab=96)
        extra = {"cache_build_seconds": time.perf_counter() - began, "cache_bytes_per_token": method.signals.stats["bytes_per_token"]}
    else:
        method = GKD(student, wrapped, optimizer, lmbda=1.0 if config == "ours-on" else 0.0, beta=0.5, temperature=0.9)

    class Clock(L.Callback):
        def on_train_batch_start(self, *args):
            self.began = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.began)

    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, use_distributed_sampler=False, callbacks=[Clock()])
    trainer.fit(method, datamodule=datamodule)
    return extra


def main() -> None:
    import torch

    import lm_common as c
    from anydistill.data.shakespeare import ShakespeareData

    work = Path(tempfile.mkdtemp(prefix="lm-vs-trl-"))
    teacher = c.teacher().model
    teacher.save_pretrained(work / "teacher")
    c.student(0).save_pretrained(work / "student")
    datamodule = ShakespeareData(**c.DATA)
    datamodule.setup()
    datamodule.tokenizer.save_pretrained(work / "teacher")
    torch.save(datamodule.split("train")[0][: BATCH * STEPS].clone(), work / "blocks.pt")

    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    for repeat in range(REPEATS):
        for config in CONFIGS:
            child_env = {**env, **TUNED_MALLOC} if config.endswith("-malloc") else env
            done = subprocess.run([sys.executable, __file__, "--child", config, str(work), str(repeat)], env=child_env,
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"{config} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[config].append(result)
            print(repeat, config, f"median step {statistics.median(result['step_seconds'][WARMUP:]) * 1000:.1f} ms",
                  f"rss {result['max_rss_mb']:.0f} MB", flush=True)

    tokens = BATCH * (BLOCK - PROMPT)
    summary = {}
    for config, results in runs.items():
        speeds = [tokens / statistics.median(r["step_seconds"][WARMUP:]) for r in results]
        summary[config] = {"tokens_per_s": speeds, "max_rss_mb": [r["max_rss_mb"] for r in results]}
        for key in ("cache_build_seconds", "cache_bytes_per_token"):
            if key in results[0]:
                summary[config][key] = [r[key] for r in results]
    # Ratios per repeat (each repeat's configurations ran back to back), then mean ± std.
    ratio = lambda a, b: [x / y for x, y in zip(summary[a]["tokens_per_s"], summary[b]["tokens_per_s"])]  # noqa: E731
    ratios = {
        "ours-off / trl-off": ratio("ours-off", "trl-off"), "ours-off / bare-off": ratio("ours-off", "bare-off"),
        "ours-off / trl-off-malloc (control)": ratio("ours-off", "trl-off-malloc"),
        "ours-cache / trl-off": ratio("ours-cache", "trl-off"), "ours-on / trl-on": ratio("ours-on", "trl-on"),
        "rss ours-off / trl-off": [a / b for a, b in zip(summary["ours-off"]["max_rss_mb"], summary["trl-off"]["max_rss_mb"])],
        "rss ours-on / trl-on": [a / b for a, b in zip(summary["ours-on"]["max_rss_mb"], summary["trl-on"]["max_rss_mb"])],
    }
    import torch as _torch
    import transformers
    import trl

    versions = {"torch": _torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    fmt = lambda values, digits=0: f"{c.mean_std(values)[0]:,.{digits}f} ± {c.mean_std(values)[1]:,.{digits}f}"  # noqa: E731
    lines = [
        "# Throughput and memory next to TRL GKDTrainer (identical tiny models)",
        "",
        f"Teacher GPT-2 4L d128, student 1L d64, char vocabulary (96 logits); batch {BATCH}, {PROMPT}-token prompts, "
        f"{BLOCK - PROMPT}-token completions, fp32, {THREADS} threads, dropout off. {STEPS} steps per child process, the first "
        f"{WARMUP} skipped, median step time; {REPEATS} interleaved repeats; mean ± std over repeats. Versions: "
        f"{versions}. Completion tokens per step: {tokens} (on-policy: generated tokens, assuming no early <eos>).",
        "",
        "| configuration | completion tokens/s | peak RSS (MB) |",
        "|---|---:|---:|",
        *[f"| {config} | {fmt(s['tokens_per_s'])} | {fmt(s['max_rss_mb'])} |" for config, s in summary.items()],
        "",
        "| ratio | mean ± std over repeats |",
        "|---|---:|",
        *[f"| {name} | {fmt(values, 3)} |" for name, values in ratios.items()],
        "",
        "TRL settings: `bf16=False, gradient_checkpointing=False, max_grad_norm=0` (its defaults are bf16 autocast, "
        "gradient checkpointing, which also disables the KV cache in its generation, and clipping at norm 1).",
        "",
        "Where the online gain comes from (all in `anydistill.lm`, none of it changes a loss or a weight): (1) the teacher runs before the student's forward (TRL runs it after): with the student's graph alive, glibc malloc returns the teacher's large freed buffers to the OS and faults them in again on every step; the `trl-off-malloc` control (TRL with `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` set so that malloc keeps freed memory) shows that share; (2) the frozen teacher's tanh-GELU runs as transformers' fused `GELUTanh` (the same function; logits within 1e-6; GPT-2-family teachers only); (3) the teacher's forward runs under `torch.inference_mode`.",
        "",
        f"Top-32 cache build (one teacher pass over the {BATCH * STEPS} blocks, excluded from the step times): "
        f"{fmt(summary['ours-cache']['cache_build_seconds'], 1)} s; {summary['ours-cache']['cache_bytes_per_token'][0]} bytes/token.",
        "",
    ]
    c.write_results("lm_vs_trl", {"versions": versions, "summary": summary, "ratios": ratios,
                                  "steps": STEPS, "warmup": WARMUP, "repeats": REPEATS}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
    else:
        began = time.perf_counter()
        main()
        print(f"total {time.perf_counter() - began:.0f} s")
