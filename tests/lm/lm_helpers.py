"""Tiny causal LMs and Shakespeare data for the LM method tests (seconds on one core)."""

from __future__ import annotations

import os

import lightning as L
import torch

from anydistill.core.teacher import Teacher
from anydistill.models.causal_lm import gpt2_lm
from anydistill.data.shakespeare import ShakespeareData

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_data(**overrides) -> ShakespeareData:
    settings = dict(block_size=32, prompt_tokens=8, batch_size=8, train_limit=32, eval_limit=8, seed=0)
    settings.update(overrides)
    return ShakespeareData(**settings)


def tiny_lm(seed: int, *, layers: int = 1, width: int = 32, vocab: int = 96):
    torch.manual_seed(seed)
    return gpt2_lm(vocab_size=vocab, n_layer=layers, n_embd=width, n_head=2, n_positions=32)


def tiny_teacher(seed: int = 100, **kwargs) -> Teacher:
    return Teacher(tiny_lm(seed, layers=2, **kwargs), name="tiny-teacher")


def fit(method, data, *, steps: int, accumulate: int = 1, ckpt_path=None, max_epochs: int = -1, callbacks=()):
    trainer = L.Trainer(
        max_steps=steps, max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        accumulate_grad_batches=accumulate, use_distributed_sampler=False, callbacks=list(callbacks),
    )
    trainer.fit(method, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
