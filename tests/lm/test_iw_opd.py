"""IW-OPD (lm.iw_opd and gkd's token_weighting / objective): the weights by hand, TRL parity, the
uniform limit."""

from __future__ import annotations

import collections
import types

import pytest
import torch

from anydistill.core.errors import RecipeError
from anydistill.core.recipe import OptimizerSpec
from anydistill.lm.iw_opd import iw_opd_weights, opd_advantages, sampled_opd_loss
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.token_losses import token_logprobs
from lm.lm_helpers import fit, state, tiny_data, tiny_lm, tiny_teacher

OPTIMIZER = OptimizerSpec(name="adamw", lr=3e-3, schedule="constant")


def test_weights_match_the_hand_computation() -> None:
    advantages = torch.tensor([[0.2, -0.3, 0.5], [0.4, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    weights = iw_opd_weights(advantages, mask, gamma=0.5)
    # Row 1: |A| = [.2, .3, .5], D = 1, F = [0, .2, .5]; row 2: one token; padding gets 1.
    torch.testing.assert_close(weights, torch.tensor([[1.5, 1.4, 1.25], [1.5, 1.0, 1.0]]))
    assert torch.equal(iw_opd_weights(advantages, mask, gamma=0.0), torch.ones(2, 3))


def test_sampled_loss_equals_trls_iw_opd_loss_and_gradient() -> None:
    pytest.importorskip("trl.experimental.iw_opd")
    from trl.experimental.iw_opd.iw_opd_trainer import IWOPDTrainer

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator, dtype=torch.float64)
    tokens = torch.randint(11, (2, 5), generator=generator)
    labels = tokens.clone()
    labels[1, 3:] = -100
    mask = labels != -100
    teacher = torch.log_softmax(torch.randn(2, 5, 11, generator=generator, dtype=torch.float64) / 0.9, -1).gather(-1, tokens[..., None])[..., 0]
    fake = types.SimpleNamespace(temperature=0.9, iw_opd_gamma=0.5, iw_opd_epsilon=1e-8, model=torch.nn.Linear(1, 1),
                                 _metrics={"train": collections.defaultdict(list)})
    theirs_logits = logits.clone().requires_grad_()
    theirs = IWOPDTrainer._compute_iw_opd_loss(fake, theirs_logits, tokens, labels, teacher)
    ours_logits = logits.clone().requires_grad_()
    student = token_logprobs(ours_logits, tokens, 0.9)
    advantages = opd_advantages(teacher, student, mask)
    total, count = sampled_opd_loss(student, advantages, iw_opd_weights(advantages, mask, 0.5), mask)
    ours = total / count
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (g_theirs,) = torch.autograd.grad(theirs, theirs_logits)
    (g_ours,) = torch.autograd.grad(ours, ours_logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)


def trained(**params) -> dict[str, torch.Tensor]:
    method = GKD(tiny_lm(0), tiny_teacher(), OPTIMIZER, fused_head=False, **params)
    fit(method, tiny_data(), steps=3)
    return state(method.student)


def test_gamma_zero_is_uniform_gkd_exactly() -> None:
    uniform = trained(lmbda=1.0)
    weighted = trained(lmbda=1.0, token_weighting="iw-opd", iw_opd_gamma=0.0)
    assert all(torch.equal(uniform[k], weighted[k]) for k in uniform)
    assert any(not torch.equal(uniform[k], v) for k, v in trained(lmbda=1.0, token_weighting="iw-opd").items())


def test_opd_objective_needs_lmbda_1_and_a_full_teacher(tmp_path) -> None:
    method = GKD(tiny_lm(0), tiny_teacher(), OPTIMIZER, objective="opd", lmbda=0.5)
    assert "set lmbda: 1" in method.recipe_problems(teacher_shapes={}, student_shapes={}, max_epochs=1)[0]
    cached = GKD(tiny_lm(0), tiny_teacher(), OPTIMIZER, lmbda=0.0, token_weighting="iw-opd", topk=8, cache_dir=str(tmp_path))
    with pytest.raises(RecipeError, match="need the teacher's full distribution"):
        fit(cached, tiny_data(), steps=1)
    assert trained(lmbda=1.0, objective="opd", token_weighting="iw-opd")  # trains
