"""The language-model evaluator: held-out NLL and perplexity, KL(teacher || student), generations,
throughput and size, the same for the teacher, the baseline and every student of a run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anydistill.core.evaluator import Evaluator
from anydistill.core.recipe import PositiveFloat, PositiveInt
from anydistill.core.rundir import write_atomic
from anydistill.core.teacher import Teacher
from anydistill.lm.common import causal_logits, generate
from anydistill.lm.token_losses import token_ce_loss, token_distill_loss
from anydistill.lm.vocab import check_vocab
from anydistill.data.tokenizers import encode


@torch.no_grad()
def held_out_nll(model: nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """Mean NLL per completion token (nats) of ``model`` on blocks ``input_ids`` [N, L], and the
    scoring throughput in tokens/s (one eval forward per batch, no KV cache)."""
    total, count, seconds = 0.0, 0, 0.0
    for start in range(0, input_ids.shape[0], batch_size):
        ids, mask = input_ids[start : start + batch_size], completion_mask[start : start + batch_size]
        began = time.perf_counter()
        logits = causal_logits(model, ids, torch.ones_like(ids))
        seconds += time.perf_counter() - began
        ce_sum, n = token_ce_loss(logits, ids[:, 1:], mask[:, 1:])
        total, count = total + float(ce_sum), count + n
    return total / max(count, 1), input_ids.numel() / max(seconds, 1e-9)


@torch.no_grad()
def held_out_kl(teacher: nn.Module, student: nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                vocab: int, batch_size: int = 64) -> float:
    """Mean KL(p_teacher || q_student) per completion token (nats) on ``input_ids`` [N, L], over the
    first ``vocab`` logits (the shared vocabulary)."""
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids, mask = input_ids[start : start + batch_size], completion_mask[start : start + batch_size]
        ones = torch.ones_like(ids)
        kl_sum, n = token_distill_loss(causal_logits(student, ids, ones)[..., :vocab], causal_logits(teacher, ids, ones)[..., :vocab],
                                       mask[:, 1:], divergence="fkl")
        total, count = total + float(kl_sum), count + n
    return total / max(count, 1)


def completion_characters(tokenizer: Any, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> int:
    """Characters of the scored completion text of blocks ``input_ids`` [N, L] (the tokens at
    positions >= 1 under ``completion_mask``), decoded span by span: the tokenizer-free denominator
    of ``nll_per_char`` (a char and a BPE tokenizer give the same count for the same text)."""
    mask = completion_mask.clone()
    mask[:, 0] = False
    return sum(len(tokenizer.decode(ids[row_mask].tolist(), skip_special_tokens=True)) for ids, row_mask in zip(input_ids, mask))


class LMEvaluator(Evaluator):
    """Scores causal LMs on the data module's test split.

    Metrics of a row: ``nll`` (nats per completion token on the test texts) and ``perplexity``,
    ``nll_per_char`` (the same sum over the characters of the completion text: comparable across
    tokenizers), ``val_nll``, ``kl_teacher`` (KL(teacher || model) per token on the test texts;
    absent without a teacher, or when teacher and student tokenize differently: paired data, where
    the teacher's own row is scored on the teacher's tokens), ``greedy`` and ``sample`` (continuations of ``prompt``), ``gen_tokens_per_s``
    (generation with the KV cache, batch 1), ``score_tokens_per_s`` (eval forward, batch 64),
    ``params``, ``threads``. Data with domain tags (``data.domain_column``) adds ``nll_DOMAIN`` and
    ``nll_per_char_DOMAIN`` for each domain's test rows.

    Args:
        prompt: the text the generations continue.
        generate_tokens: tokens generated for each continuation (and for the throughput).
        temperature: sampling temperature of ``sample``.
        seed: seed of the sampled continuation (drawn on a forked RNG: training is unaffected).
    """

    headline = ("nll", "perplexity", "kl_teacher", "gen_tokens_per_s", "params", "train_time_s")

    def __init__(
        self,
        data: Any,
        student_spec: dict[str, Any] | None = None,
        data_name: str | None = None,
        *,
        prompt: str = "ROMEO.\n",
        generate_tokens: PositiveInt = 100,
        temperature: PositiveFloat = 0.8,
        seed: int = 0,
    ):
        super().__init__(data, student_spec, data_name)
        self.prompt, self.generate_tokens, self.temperature, self.seed = prompt, generate_tokens, temperature, seed
        data.setup()
        # Paired data (uld, gold): one text, two tokenizers; the teacher is scored on its own tokens.
        self.sides = {"student": (data.tokenizer, data.split("test"), data.split("val"))}
        if hasattr(data, "teacher_split"):
            self.sides["teacher"] = (data.teacher_tokenizer, data.teacher_split("test"), data.teacher_split("val"))
        self.tokenizer, self.test, self.val = self.sides["student"]
        self.characters = {side: completion_characters(tokenizer, *test) for side, (tokenizer, test, _) in self.sides.items()}
        # Each domain's test rows, and their characters (data.domain_column)
        self.domains = {}
        for i, domain in enumerate(getattr(data, "domains", None) or []):
            rows = data.domain_rows["test"] == i
            ids, mask = self.test[0][rows], self.test[1][rows]
            self.domains[domain] = (ids, mask, completion_characters(self.tokenizer, ids, mask))

    def evaluate(self, model: nn.Module, teacher: Teacher | None, method: str) -> dict[str, Any]:
        model = model.cpu()
        was_training = model.training
        model.eval()
        is_teacher = teacher is not None and teacher.model is model
        side = "teacher" if is_teacher and "teacher" in self.sides else "student"
        tokenizer, test, val = self.sides[side]
        nll, score_speed = held_out_nll(model, *test)
        val_nll, _ = held_out_nll(model, *val)
        tokens = int(test[1][:, 1:].sum())
        row: dict[str, Any] = {"nll": nll, "perplexity": math.exp(min(nll, 700)), "nll_per_char": nll * tokens / max(self.characters[side], 1),
                               "val_nll": val_nll}
        for domain, (ids, mask, characters) in self.domains.items() if side == "student" else ():
            domain_nll, _ = held_out_nll(model, ids, mask) if ids.shape[0] else (float("nan"), 0.0)
            row[f"nll_{domain}"] = domain_nll
            row[f"nll_per_char_{domain}"] = domain_nll * int(mask[:, 1:].sum()) / max(characters, 1)
        if teacher is not None and teacher.model is not None and not is_teacher and len(self.sides) == 1:  # served: no module here
            vocab = check_vocab(model, teacher.model, tokenizer)
            row["kl_teacher"] = held_out_kl(teacher.model.cpu(), model, *test, vocab=vocab)
        prompt = encode(tokenizer, [self.prompt])[0][None]
        special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        began = time.perf_counter()
        greedy, _ = generate(model, prompt, self.generate_tokens, do_sample=False, **special)
        seconds = time.perf_counter() - began
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            sampled, _ = generate(model, prompt, self.generate_tokens, do_sample=True, temperature=self.temperature, **special)
        model.train(was_training)
        decode = lambda ids: tokenizer.decode(ids[0, prompt.shape[1]:], skip_special_tokens=False)  # noqa: E731
        row.update({
            "greedy": decode(greedy), "sample": decode(sampled),
            "gen_tokens_per_s": self.generate_tokens / max(seconds, 1e-9), "score_tokens_per_s": score_speed,
            "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        })
        return row

    def export(self, model: nn.Module, spec: dict[str, Any], directory: Path, method: str) -> Path:
        """``save_pretrained`` of the model and the tokenizer into ``directory`` (reloadable with
        ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``), plus ``model.json`` (the
        recipe section that rebuilds it). Returns the weights' path."""
        from transformers.utils import logging as hf_logging

        directory.mkdir(parents=True, exist_ok=True)
        hf_logging.disable_progress_bar()  # one bar per export would clutter the run's output
        model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        write_atomic(directory / "model.json", json.dumps(spec, indent=2))
        return directory / "model.safetensors"

    def card(self) -> dict[str, Any]:
        test_ids, test_mask = self.test
        return {
            "family": "lm",
            "data": self.data_name,
            "layout": self.data.transform,
            "test_blocks": int(test_ids.shape[0]),
            "test_completion_tokens": int(test_mask[:, 1:].sum()),
            "tokenizer_ids": len(self.tokenizer),
            "nll": "mean nats per completion token on the test texts (plays never seen in training)",
            "nll_per_char": "the same NLL summed over the test completions, divided by their characters (comparable across tokenizers)",
            "kl_teacher": "mean KL(teacher || model) per completion token on the test texts, nats",
            **({"domains": {d: {"test_blocks": int(ids.shape[0]), "characters": c} for d, (ids, _, c) in self.domains.items()}}
               if self.domains else {}),
            "prompt": self.prompt,
            "generate_tokens": self.generate_tokens,
            "temperature": self.temperature,
        }
