"""Shared set-up of the LM benchmarks: Shakespeare char data, a teacher trained once (cached under
benchmarks/runs/lm_teacher/, rebuilt when absent), students trained for a fixed number of steps, held-out metrics.

Scale (one CPU thread): teacher GPT-2 4 layers d=128 (0.83 M params), student 1 layer d=64
(0.06 M), blocks of 64 characters, batch 32. Everything is seeded; threads: `OMP_NUM_THREADS` (default 1).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from anydistill.core.recipe import OptimizerSpec  # noqa: E402
from anydistill.core.teacher import Teacher  # noqa: E402
from anydistill.lm.evaluate import held_out_kl, held_out_nll  # noqa: E402
from anydistill.lm.methods.sft import LMTeacher  # noqa: E402
from anydistill.models.causal_lm import gpt2_lm  # noqa: E402
from anydistill.data.shakespeare import ShakespeareData  # noqa: E402
from common import mean_std, write_results  # noqa: E402, F401

# One thread unless the caller's environment says otherwise (lm_vs_trl's children run at 2).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
RUNS = Path(__file__).parent / "runs" / "lm_teacher"  # the trained teacher, reused by every LM benchmark (not committed)
DATA = dict(block_size=64, prompt_tokens=16, batch_size=32, eval_limit=256, seed=0)
TEACHER = dict(vocab_size=96, n_layer=4, n_embd=128, n_head=4, n_positions=64)
STUDENT = dict(vocab_size=96, n_layer=1, n_embd=64, n_head=2, n_positions=64)
TEACHER_STEPS = 1200
OPTIMIZER = OptimizerSpec(name="adamw", lr=3e-3, schedule="cosine")


def data(**overrides) -> ShakespeareData:
    module = ShakespeareData(**{**DATA, **overrides})
    module.setup()
    return module


class StepClock(L.Callback):
    """Each training step's wall time in ``seconds``, from Lightning's batch start to batch end."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args):
        self.began = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.seconds.append(time.perf_counter() - self.began)


def fit(method, datamodule, steps: int) -> float:
    """Train ``method`` for ``steps`` optimizer steps; returns the wall time in seconds."""
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, use_distributed_sampler=False)
    began = time.perf_counter()
    trainer.fit(method, datamodule=datamodule)
    return time.perf_counter() - began


def teacher(steps: int = TEACHER_STEPS) -> Teacher:
    """The benchmark teacher, trained once (``steps`` steps of next-token CE) and cached."""
    path = RUNS / f"gpt2-L{TEACHER['n_layer']}-d{TEACHER['n_embd']}-steps{steps}.safetensors"
    L.seed_everything(1234, verbose=False)
    model = gpt2_lm(**TEACHER)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
    else:
        seconds = fit(LMTeacher(model, None, OPTIMIZER), data(), steps)
        RUNS.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        print(f"teacher trained in {seconds:.0f} s -> {path}", flush=True)
    return Teacher(model.eval(), name=path.stem)


def student(seed: int):
    L.seed_everything(seed, verbose=False)
    return gpt2_lm(**STUDENT)


def scores(model, teacher_model, datamodule) -> dict[str, float]:
    """Held-out (test plays) NLL per token and KL(teacher || model), both in nats."""
    model.eval()
    ids, mask = datamodule.split("test")
    nll, _ = held_out_nll(model, ids, mask)
    return {"nll": nll, "kl_teacher": held_out_kl(teacher_model, model, ids, mask, vocab=96)}


def row(label: str, values: dict[str, list[float]], keys=("nll", "kl_teacher", "seconds")) -> str:
    cells = []
    for key in keys:
        m, s = mean_std(values[key])
        cells.append(f"{m:.4f} ± {s:.4f}" if key != "seconds" else f"{m:.1f} ± {s:.1f}")
    return f"| {label} | " + " | ".join(cells) + " |"


@torch.no_grad()
def teacher_nll_of_samples(model, teacher_model, datamodule, *, blocks: int = 64, seed: int = 0) -> float:
    """The teacher's NLL per token of the model's own samples (T = 1) continuing held-out prompts:
    the quality of what the student generates, as the teacher judges it (lower is better)."""
    from anydistill.lm.common import causal_logits, generate
    from anydistill.lm.token_losses import token_ce_loss

    ids, _ = datamodule.split("test")
    prompts = ids[:blocks, : datamodule.prompt_tokens]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sequences, mask = generate(model, prompts, datamodule.block_size - datamodule.prompt_tokens, do_sample=True,
                                   eos_token_id=1, pad_token_id=0)
    logits = causal_logits(teacher_model, sequences, torch.ones_like(sequences))
    total, count = token_ce_loss(logits, sequences[:, 1:], mask[:, 1:])
    return float(total) / max(count, 1)


SAMPLE_KEYS = ("nll", "kl_teacher", "teacher_nll_of_samples", "seconds")


def seeded_runs(builders: dict, teacher: Teacher, datamodule: ShakespeareData, seeds, steps: int) -> dict[str, dict[str, list[float]]]:
    """Train ``builders[label](student, teacher)`` for every seed and label (``steps`` steps each) and
    collect ``SAMPLE_KEYS``: held-out scores, the teacher's NLL of the student's samples, seconds."""
    results = {label: {k: [] for k in SAMPLE_KEYS} for label in builders}
    for seed in seeds:
        for label, build in builders.items():
            method = build(student(seed), teacher)
            seconds = fit(method, datamodule, steps)
            found = scores(method.student, teacher.model, datamodule)
            found["teacher_nll_of_samples"] = teacher_nll_of_samples(method.student, teacher.model, datamodule)
            for key, value in {**found, "seconds": seconds}.items():
                results[label][key].append(value)
            print(seed, label, found, f"{seconds:.1f}s", flush=True)
    return results
