"""The fused LM-head loss inside `lm-kd` and `gkd`: the same training as the full-logit path, on
padded batches and from the top-k cache too, and a model whose logits are not ``hidden @ head``
(Gemma-2's soft-cap) or a sharded strategy keeps the full-logit path."""

from __future__ import annotations

import logging

import pytest
import torch

from anydistill.core.recipe import OptimizerSpec
from anydistill.lm.common import targets_and_mask
from anydistill.lm.head import choose_fused, head_problem, lm_head
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.kd import LMKD
from lm.lm_helpers import fit, tiny_data, tiny_lm, tiny_teacher

SGD = OptimizerSpec(name="sgd", lr=0.5, momentum=0.0, schedule="constant")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("divergence", ["fkl", "jsd", "srkl"])
def test_lm_kd_fused_trains_like_full_logits(divergence: str) -> None:
    runs = []
    for fused in (True, False):
        method = LMKD(tiny_lm(0), tiny_teacher(), SGD, divergence=divergence, temperature=1.5, alpha=0.6,
                      fused_head=fused, head_chunk_tokens=37)
        fit(method, tiny_data(), steps=3)
        assert method.fused == fused
        runs.append(method.student)
    same_weights(*runs)


def test_lm_kd_fused_from_the_topk_cache_trains_like_full_logits(tmp_path) -> None:
    runs = []
    for fused in (True, False):
        method = LMKD(tiny_lm(0), tiny_teacher(), SGD, divergence="fkl", alpha=0.5, topk=8, fused_head=fused,
                      cache_dir=str(tmp_path / "cache"))
        fit(method, tiny_data(), steps=3)
        assert method.fused == fused and method.signals is not None
        runs.append(method.student)
    same_weights(*runs)


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_gkd_fused_trains_like_full_logits(lmbda: float) -> None:
    runs = []
    for fused in (True, False):
        torch.manual_seed(3)  # the same on-policy draws and samples in both runs
        method = GKD(tiny_lm(0), tiny_teacher(), SGD, lmbda=lmbda, beta=0.3, fused_head=fused)
        fit(method, tiny_data(), steps=3)
        runs.append(method.student)
    same_weights(*runs)


def test_padded_batch_gives_the_same_loss_and_gradients() -> None:
    """Rows of different lengths (attention 0 and no completion on the padding) through both paths."""
    teacher = tiny_teacher()
    method = LMKD(tiny_lm(0), teacher, SGD, divergence="jsd", alpha=0.7)
    method.vocab = 96
    ids = torch.randint(0, 96, (3, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[1, 7:] = 0
    attention[2, 4:] = 0
    completion = attention.bool() & (torch.arange(12) >= 2)
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
    targets, mask = targets_and_mask(ids, completion)
    results = []
    for fused in (True, False):
        method.fused, method.teacher_head = fused, lm_head(teacher.model, 96) if fused else None
        method.student.zero_grad()
        loss, kd, ce, count = (method.fused_losses if fused else method.unfused_losses)(batch, method.teacher_signal(batch), targets, mask)
        loss.backward()
        results.append((loss.detach(), kd.detach(), ce.detach(), count, [p.grad.clone() for p in method.student.parameters()]))
    (loss_f, kd_f, ce_f, n_f, grads_f), (loss_u, kd_u, ce_u, n_u, grads_u) = results
    assert n_f == n_u == int(mask.sum())
    for a, b in ((loss_f, loss_u), (kd_f, kd_u), (ce_f, ce_u)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_f, grads_u):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def soft_capped_lm():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=8, max_position_embeddings=32, final_logit_softcapping=0.5)
    return Gemma2ForCausalLM(config)


def test_a_soft_capped_model_keeps_the_full_logit_path() -> None:
    problem = head_problem(soft_capped_lm(), 96)
    assert problem is not None and "soft-cap" in problem
    assert head_problem(tiny_lm(0), 96) is None
    fused, why = choose_fused(True, {"student": tiny_lm(0), "teacher": soft_capped_lm()}, 96)
    assert not fused and why.startswith("teacher:")


def test_sharded_strategies_and_the_opt_out_keep_the_full_logit_path() -> None:
    assert "FSDPStrategy" in head_problem(tiny_lm(0), 96, strategy="FSDPStrategy")
    assert "DeepSpeedStrategy" in head_problem(tiny_lm(0), 96, strategy="DeepSpeedStrategy")
    assert choose_fused(False, {"student": tiny_lm(0)}, 96) == (False, None)


def test_lm_kd_with_a_soft_capped_teacher_trains_on_full_logits() -> None:
    from anydistill.core.teacher import Teacher

    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("anydistill.lm.methods.kd")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        method = LMKD(tiny_lm(0), Teacher(soft_capped_lm(), name="capped"), SGD, alpha=0.5, fused_head=True)
        fit(method, tiny_data(), steps=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not method.fused
    assert any("fused LM-head loss off" in m and "soft-cap" in m for m in messages), messages


def test_auto_fuses_from_the_threshold_vocabulary_on() -> None:
    from anydistill.lm.head import FUSED_MIN_VOCAB

    assert choose_fused("auto", {"student": tiny_lm(0)}, 96) == (False, None)  # small logits: the full path is faster
    assert choose_fused(True, {"student": tiny_lm(0)}, 96) == (True, None)
    wide = tiny_lm(0, vocab=FUSED_MIN_VOCAB)
    assert choose_fused("auto", {"student": wide}, FUSED_MIN_VOCAB) == (True, None)
