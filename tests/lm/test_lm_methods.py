"""LM methods on tiny GPT-2s: top-k cache with full k equals the online teacher, gradient
accumulation and ranks do not change the gradient, resume continues exactly, GKD and seq-kd run
no wasted teacher pass, and exports reload with transformers."""

from __future__ import annotations

import pytest
import lightning as L
import torch
from safetensors.torch import load_file

from anydistill.core.recipe import OptimizerSpec
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.kd import LMKD
from anydistill.lm.methods.seq_kd import SeqKD
from anydistill.lm.methods.sft import LMSFT
from lm.lm_helpers import fit, state, tiny_data, tiny_lm, tiny_teacher

# Plain SGD: Adam's first step is nearly sign(g) * lr, which would hide a wrongly scaled gradient.
SGD = OptimizerSpec(name="sgd", lr=0.5, momentum=0.0, schedule="constant")


def test_topk_cache_with_full_k_trains_like_the_online_teacher(tmp_path) -> None:
    teacher = tiny_teacher()
    online = LMKD(tiny_lm(0), teacher, SGD, divergence="fkl", alpha=1.0)
    fit(online, tiny_data(), steps=3)
    cached = LMKD(tiny_lm(0), teacher, SGD, divergence="fkl", alpha=1.0, topk=96, cache_dtype="float32",
                  cache_dir=str(tmp_path / "cache"))
    fit(cached, tiny_data(), steps=3)
    assert cached.signals is not None and cached.signals.stats["reconstruction_kl"] < 1e-6
    for key, value in online.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lm-sft", "lm-kd"])
def test_gradient_accumulation_gives_the_big_batch_step(method: str) -> None:
    def build():
        student = tiny_lm(0)
        if method == "lm-sft":
            return LMSFT(student, None, SGD)
        return LMKD(student, tiny_teacher(), SGD, divergence="jsd", beta=0.3, alpha=0.6)

    whole = build()
    fit(whole, tiny_data(batch_size=8), steps=1, accumulate=1)
    split = build()
    fit(split, tiny_data(batch_size=4), steps=1, accumulate=2)  # the same 8 rows in two micro-batches
    moved = 0.0
    for key, value in whole.student.state_dict().items():
        torch.testing.assert_close(split.student.state_dict()[key], value, rtol=1e-5, atol=1e-6)
        moved = max(moved, float((value - tiny_lm(0).state_dict()[key]).abs().max()))
    assert moved > 1e-3  # the step did something


def test_gkd_resumes_bit_exactly_from_an_epoch_checkpoint(tmp_path) -> None:
    def build(seed: int):
        return GKD(tiny_lm(seed), tiny_teacher(), OptimizerSpec(name="adamw", lr=3e-3, schedule="constant"),
                   lmbda=0.5, beta=0.5)

    torch.manual_seed(7)
    whole = build(0)
    fit(whole, tiny_data(train_limit=16), steps=-1, max_epochs=2)

    torch.manual_seed(7)
    first = build(0)
    trainer = fit(first, tiny_data(train_limit=16), steps=-1, max_epochs=1)
    trainer.save_checkpoint(tmp_path / "epoch0.ckpt")
    torch.manual_seed(999)  # the checkpoint restores the RNG: the seed here must not matter
    resumed = build(123)
    fit(resumed, tiny_data(train_limit=16), steps=-1, max_epochs=2, ckpt_path=tmp_path / "epoch0.ckpt")
    for key, value in whole.student.state_dict().items():
        assert torch.equal(resumed.student.state_dict()[key], value), f"{key} differs after resume"


class ForwardCounter(L.Callback):
    """Counts a model's trunk passes during training (generation steps included; the fused LM-head
    path runs the trunk without the head, so the trunk is what is counted)."""

    def __init__(self, model: torch.nn.Module):
        self.calls = 0
        model.base_model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def on_train_start(self, *args) -> None:  # setup's one-off passes (the fused-head check) do not count
        self.calls = 0


@pytest.mark.parametrize("fused_head", [True, False])
@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_gkd_runs_the_teacher_once_per_step(lmbda: float, fused_head: bool) -> None:
    teacher = tiny_teacher()
    counter = ForwardCounter(teacher.model)
    method = GKD(tiny_lm(0), teacher, SGD, lmbda=lmbda, fused_head=fused_head)
    student_counter = ForwardCounter(method.student)
    fit(method, tiny_data(), steps=2, callbacks=[counter, student_counter])
    assert method.fused == fused_head
    assert counter.calls == 2
    # Off-policy: one student forward per step; on-policy: plus one per generated token (KV cache:
    # a prompt pass, then one pass per new token; block 32 - prompt 8 = 24 new tokens).
    assert student_counter.calls == (2 if lmbda == 0 else 2 * (1 + 24))


def test_seq_kd_trains_on_teacher_generations_without_an_extra_teacher_pass() -> None:
    teacher = tiny_teacher()
    counter = ForwardCounter(teacher.model)
    method = SeqKD(tiny_lm(0), teacher, SGD)
    before = state(method.student)
    fit(method, tiny_data(), steps=2, callbacks=[counter])
    assert counter.calls == 2 * 24  # generation only: 24 new tokens per step, the first with the prompt
    assert any(not torch.equal(v, before[k]) for k, v in method.student.state_dict().items())


def test_generate_masks_everything_after_the_first_eos() -> None:
    from anydistill.lm.common import generate

    class Scripted(torch.nn.Module):
        def generate(self, input_ids, max_new_tokens, **_):
            new = torch.tensor([[5, 1, 0, 0], [6, 7, 8, 9]])  # row 0 stops at <eos> (1), then padding
            return torch.cat([input_ids, new[:, :max_new_tokens]], dim=1)

    ids, mask = generate(Scripted(), torch.tensor([[3, 4], [3, 4]]), 4, do_sample=False, eos_token_id=1, pad_token_id=0)
    assert ids.tolist() == [[3, 4, 5, 1, 0, 0], [3, 4, 6, 7, 8, 9]]
    assert mask.tolist() == [[False, False, True, True, False, False], [False, False, True, True, True, True]]


def test_export_reloads_with_transformers_and_the_engine(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anydistill.lm.evaluate import LMEvaluator

    data = tiny_data()
    evaluator = LMEvaluator(data, generate_tokens=8)
    model = tiny_lm(0).eval()
    evaluator.export(model, {"name": "gpt2-lm"}, tmp_path, "lm-sft")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("ROMEO.\n", return_tensors="pt").input_ids
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    out = reloaded.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 5)
    # The engine reloads a trained teacher strictly from the same file (runner.build_trained_teacher).
    fresh = tiny_lm(1)
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))

    row = evaluator.evaluate(model, None, "lm-sft")
    assert row["nll"] > 0 and len(row["greedy"]) > 0 and row["params"] == sum(p.numel() for p in model.parameters())


def test_adaptive_cache_within_a_tiny_budget_trains_like_the_online_teacher(tmp_path) -> None:
    teacher = tiny_teacher()
    online = LMKD(tiny_lm(0), teacher, SGD, divergence="fkl", alpha=1.0)
    fit(online, tiny_data(), steps=3)
    cached = LMKD(tiny_lm(0), teacher, SGD, divergence="fkl", alpha=1.0, topk="adaptive", kl_budget=1e-5,
                  cache_dir=str(tmp_path / "cache"))
    fit(cached, tiny_data(), steps=3)
    stats = cached.signals.stats
    assert stats["max_kl"] <= 1e-5 and stats["violations"] == 0 and stats["mean_k"] < 96
    for key, value in online.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[key], value, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("options, message", [
    ({"topk": "adaptive", "kl_budget": 0}, "kl_budget"),
    ({"topk": "adaptive", "k_min": 9, "k_max": 4}, "k_min"),
    ({"topk": "adaptive", "k_max": 500}, "k_max"),
    ({"topk": 500}, "topk"),
])
def test_bad_cache_settings_are_refused_in_one_line_before_anything_is_written(tmp_path, options, message) -> None:
    from anydistill.catalog import load_recipe

    recipe = {"name": "bad-cache", "data": {"name": "shakespeare", "block_size": 32, "prompt_tokens": 8, "train_limit": 16},
              "teacher": {"name": "gpt2-lm", "vocab_size": 96, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32},
              "student": {"name": "gpt2-lm", "vocab_size": 96, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32},
              "methods": {"lm-kd": {**options, "cache_dir": str(tmp_path / "cache")}}}
    with pytest.raises(Exception) as error:
        load_recipe(recipe)
    text = str(error.value)
    assert message in text and len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("fused_head", [True, False])
def test_gkd_reads_the_data_completions_from_the_cache(tmp_path, fused_head: bool) -> None:
    """Off-policy batches read the cache (no teacher pass) and train as the online teacher would."""
    teacher = tiny_teacher()
    online = GKD(tiny_lm(0), teacher, SGD, lmbda=0.0, beta=0.5, fused_head=fused_head)
    fit(online, tiny_data(), steps=3)
    counter = ForwardCounter(teacher.model)
    cached = GKD(tiny_lm(0), teacher, SGD, lmbda=0.0, beta=0.5, fused_head=fused_head, topk=96, cache_dtype="float32",
                 cache_dir=str(tmp_path / "cache"))
    fit(cached, tiny_data(), steps=3, callbacks=[counter])
    assert counter.calls == 0
    for key, value in online.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[key], value, rtol=1e-5, atol=1e-6)
