"""MiniLLM: the policy-gradient pieces against hand computations, the teacher-mixed sampler against
`generate` and the mixture it samples, the GKD (beta = 1) equivalence of the single-step term, and
tiny end-to-end fits (schedule over every PPO update, resume, validation errors)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from anydistill.core.recipe import OptimizerSpec, validate_kwargs
from anydistill.lm.common import generate
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.methods.minillm import MiniLLM
from anydistill.lm.mixed_sampling import sample_mixed
from anydistill.lm.policy_gradient import (
    importance_weights, ppo_surrogate, returns, rollout_reverse_kl, single_step_rkl, token_logprobs, token_rewards, whiten,
)
from anydistill.lm.token_losses import token_distill_loss
from lm.lm_helpers import fit, state, tiny_data, tiny_lm, tiny_teacher
from lm.test_lm_methods import ForwardCounter

# Plain SGD: the first step moves each weight by exactly -lr * gradient.
SGD = OptimizerSpec(name="sgd", lr=1.0, momentum=0.0, schedule="constant")
MASK = torch.tensor([[True, True, True, False], [False, True, True, True]])


# ---------------------------------------------------------------------------- pure functions


def test_rewards_and_returns_match_a_hand_computation() -> None:
    log_p = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-9.0, -1.0, -1.0, -3.0]])
    log_q = torch.tensor([[-2.0, -1.0, -1.5, -9.0], [-9.0, -1.5, -0.5, -2.0]])
    r = token_rewards(log_p, log_q, MASK)
    assert r.tolist() == [[1.0, -1.0, 1.0, 0.0], [0.0, 0.5, -0.5, -1.0]]
    scaled = token_rewards(log_p, log_q, MASK, scaling=0.5, clip=1.5)  # r / 0.5 = 2, -2, 2 -> clipped to +-1.5
    assert scaled.tolist() == [[1.5, -1.5, 1.5, 0.0], [0.0, 1.0, -1.0, -1.5]]

    # gamma = 1, length-normalised: the mean reward of the tokens left (the paper's R^Norm).
    torch.testing.assert_close(returns(r, MASK, gamma=1.0), torch.tensor([[1 / 3, 0.0, 1.0, 0.0], [0.0, -1 / 3, -0.75, -1.0]]))
    # gamma = 0: the per-token reward itself (TRL's default), with or without normalisation.
    for norm in (True, False):
        torch.testing.assert_close(returns(r, MASK, gamma=0.0, length_normalization=norm), r)
    # gamma = 0.5 without normalisation: 1 - 0.5 + 0.25 and so on.
    torch.testing.assert_close(returns(r, MASK, gamma=0.5, length_normalization=False),
                               torch.tensor([[0.75, -0.5, 1.0, 0.0], [0.0, 0.5 - 0.25 - 0.25, -0.5 - 0.5, -1.0]]))
    # gamma = 0.5, normalised by the discounted count 1 + 0.5 + 0.25.
    got = returns(r, MASK, gamma=0.5)
    assert math.isclose(float(got[0, 0]), 0.75 / 1.75, rel_tol=1e-6) and math.isclose(float(got[1, 1]), 0.0, abs_tol=1e-7)
    assert math.isclose(float(got[1, 2]), -1.0 / 1.5, rel_tol=1e-6)


def test_returns_of_long_sequences_stay_finite() -> None:
    r = torch.randn(2, 3000)
    got = returns(r, torch.ones(2, 3000, dtype=torch.bool), gamma=0.9)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[:, -1], r[:, -1])


def test_importance_weights_match_a_hand_computation() -> None:
    q, p = torch.tensor([0.5, 0.01, 0.3]), torch.tensor([0.1, 0.9, 0.3])
    w = importance_weights(q.log(), p.log(), 0.2)
    torch.testing.assert_close(w, q / (0.2 * p + 0.8 * q))
    assert math.isclose(float(w[0]), 0.5 / 0.42, rel_tol=1e-6) and math.isclose(float(w[2]), 1.0, rel_tol=1e-6)
    assert (w <= 1 / 0.8 + 1e-6).all()  # q / (alpha p + (1 - alpha) q) <= 1 / (1 - alpha)
    assert torch.equal(importance_weights(q.log(), p.log(), 0.0), torch.ones(3))


def test_ppo_surrogate_clips_and_its_first_gradient_is_the_weighted_policy_gradient() -> None:
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    mask = torch.tensor([[True, True, True, False]])
    advantages = torch.tensor([[1.0, -1.0, 2.0, 7.0]])
    # Ratios 1.5 (A > 0: clipped to 1.2), 0.5 (A < 0: clipped to 0.8), 1.1 (inside the range).
    new = old + torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]]))
    loss_sum, count = ppo_surrogate(new, old, advantages, torch.ones(1, 4), mask, clip_range=0.2)
    assert count == 3 and math.isclose(float(loss_sum), -1.2 + 0.8 - 2.2, rel_tol=1e-6)
    # Importance weights multiply the ratio before clipping (the official code's ratio * w).
    loss_w, _ = ppo_surrogate(old, old, advantages, torch.tensor([[1.1, 1.1, 1.3, 1.0]]), mask, clip_range=0.2)
    assert math.isclose(float(loss_w), -1.1 + 1.1 - 2.4, rel_tol=1e-6)

    # At theta = theta_old, with weights inside the clip range: d/dlogq = -w * A on every kept token.
    logq = old.clone().requires_grad_(True)
    weights = torch.tensor([[0.9, 1.15, 1.0, 1.0]])
    ppo_surrogate(logq, old, advantages, weights, mask, clip_range=0.2)[0].backward()
    torch.testing.assert_close(logq.grad, torch.tensor([[-0.9, 1.15, -2.0, 0.0]]))


def test_whiten_uses_only_the_masked_tokens() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [-50.0, 4.0, 5.0, 6.0]])
    out = whiten(values, MASK)
    kept = out[MASK]
    assert abs(float(kept.mean())) < 1e-6 and math.isclose(float(kept.var()), 1.0, rel_tol=1e-4)
    assert float(out[0, 3]) == 0.0 and float(out[1, 0]) == 0.0
    # A constant shift of the returns (the paper's "R_t - 1") changes nothing after whitening.
    torch.testing.assert_close(whiten(values - 1, MASK), out)


def test_single_step_term_is_the_exact_reverse_kl_and_gkd_beta_1() -> None:
    torch.manual_seed(0)
    student = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 7, dtype=torch.float64)
    total, count = single_step_rkl(student, teacher, MASK, temperature=1.0)
    q, p = student.softmax(-1), teacher.softmax(-1)
    by_hand = (q * (q.log() - p.log())).sum(-1)[MASK].sum()
    assert count == 6 and math.isclose(float(total.detach()), float(by_hand.detach()), rel_tol=1e-10)
    # Its gradient is GKD's at beta = 1 (and plain rkl's) on the same logits.
    (grad,) = torch.autograd.grad(total, student)
    jsd, _ = token_distill_loss(student, teacher, MASK, divergence="jsd", beta=1.0)
    (grad_jsd,) = torch.autograd.grad(jsd, student)
    torch.testing.assert_close(grad, grad_jsd, rtol=0, atol=1e-12)


def test_token_logprobs_and_the_logged_reverse_kl() -> None:
    logits = torch.randn(2, 4, 7)
    tokens = torch.randint(7, (2, 4))
    expected = torch.log_softmax(logits / 2.0, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, tokens, temperature=2.0), expected)
    kl = rollout_reverse_kl(torch.zeros(2, 4), torch.zeros(2, 4) - 0.3, MASK)
    assert (kl >= 0).all() and float(kl[0, 3]) == 0.0


# ---------------------------------------------------------------------------- sampling


def test_mixed_sampler_at_alpha_0_reproduces_generate_token_for_token() -> None:
    student, teacher = tiny_lm(0), tiny_teacher().model
    prompts = torch.randint(2, 90, (6, 8), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    ids, mask = generate(student, prompts, 24, do_sample=True, temperature=0.8, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(5)
    mixed, mixed_mask = sample_mixed(student, teacher, prompts, 24, alpha=0.0, vocab=96, temperature=0.8,
                                     eos_token_id=1, pad_token_id=0)
    assert torch.equal(ids, mixed) and torch.equal(mask, mixed_mask)


def test_mixed_sampler_draws_from_the_mixture() -> None:
    student, teacher = tiny_lm(0), tiny_teacher().model
    with torch.no_grad():
        teacher.lm_head.weight.mul_(200.0)  # a peaked teacher: its favourite token is easy to count
    prompts = torch.full((4000, 8), 5)
    with torch.no_grad():
        p = teacher(prompts[:1]).logits[0, -1].softmax(-1)
        q = student(prompts[:1]).logits[0, -1].softmax(-1)
    favourite = int(p.argmax())
    torch.manual_seed(0)
    ids, mask = sample_mixed(student, teacher, prompts, 1, alpha=0.2, vocab=96, eos_token_id=1, pad_token_id=0)
    expected = 0.2 * float(p[favourite]) + 0.8 * float(q[favourite])
    frequency = float((ids[:, -1] == favourite).float().mean())
    assert float(p[favourite]) > 0.9 and abs(frequency - expected) < 0.03  # std ~0.0065 at n = 4000
    assert mask[:, -1].all() and not mask[:, :-1].any()


# ---------------------------------------------------------------------------- the method


def fixed_rollouts(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's samples from the tiny data's first batch of prompts, some stopped early at <eos>."""
    data = tiny_data()
    data.setup()
    prompts = next(iter(data.train_dataloader()))["input_ids"][:, :8]
    torch.manual_seed(seed)
    ids, mask = generate(tiny_lm(0), prompts, 24, do_sample=True, eos_token_id=1, pad_token_id=0)
    ids[0, 12], ids[0, 13:] = 1, 0  # make one row stop early: the masks must agree too
    mask[0, 13:] = False
    return ids, mask


def test_without_the_rkl_advantage_the_step_is_gkd_with_beta_1() -> None:
    """TRL documents (rkl_advantage=False, single_step_decomposition=True) as GKD with reverse KL:
    on the same samples, one SGD step of each moves every weight identically."""
    ids, mask = fixed_rollouts()
    teacher = tiny_teacher()
    gkd = GKD(tiny_lm(0), teacher, SGD, lmbda=1.0, beta=1.0)
    gkd.completions = lambda batch: (ids, mask, True)
    fit(gkd, tiny_data(), steps=1)

    minillm = MiniLLM(tiny_lm(0), teacher, SGD, rkl_advantage=False, single_step_decomposition=True, lm_coef=0.0,
                      teacher_mixed_alpha=0.0, ppo_epochs=1, ppo_minibatches=1, max_grad_norm=None)
    minillm.rollouts = lambda prompts: (ids, mask)
    fit(minillm, tiny_data(), steps=1)

    start = tiny_lm(0).state_dict()
    moved = 0.0
    for key, value in gkd.student.state_dict().items():
        torch.testing.assert_close(minillm.student.state_dict()[key], value, rtol=0, atol=1e-6)
        moved = max(moved, float((value - start[key]).abs().max()))
    assert moved > 1e-3


def test_first_update_moves_along_the_weighted_policy_gradient() -> None:
    """The PPO term alone, one update at theta_old: the step is -lr * d/dtheta of
    -(1/N) sum_t w_t A_t log q_theta(y_t), with A the whitened returns of the method's own rewards."""
    ids, mask = fixed_rollouts()
    teacher = tiny_teacher()
    method = MiniLLM(tiny_lm(0), teacher, SGD, rkl_advantage=True, single_step_decomposition=False, lm_coef=0.0,
                     teacher_mixed_alpha=0.2, ppo_epochs=1, ppo_minibatches=1, max_grad_norm=None, gamma=0.9)
    method.rollouts = lambda prompts: (ids, mask)
    fit(method, tiny_data(), steps=1)

    # By hand, from the definitions (no clipping at theta_old: every w lies in (0, 1.25), and the
    # clip only binds where it would lower the objective's value).
    student = tiny_lm(0)
    with torch.no_grad():
        s = student(ids).logits[:, :-1]
        t = teacher.model(ids).logits[:, :-1]
    m = mask[:, 1:]
    log_q = torch.log_softmax(s, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    log_p = torch.log_softmax(t, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    w = log_q.exp() / (0.2 * log_p.exp() + 0.8 * log_q.exp())
    r = torch.where(m, ((log_p - log_q) / 0.5).clamp(-100, 100), torch.zeros_like(log_p))
    R = torch.zeros_like(r)
    for b in range(r.shape[0]):
        for i in range(r.shape[1]):
            weights = torch.tensor([0.9 ** (j - i) if m[b, j] else 0.0 for j in range(i, r.shape[1])])
            R[b, i] = (weights * r[b, i:]).sum() / weights.sum().clamp(min=1e-30) if m[b, i] else 0.0
    A = (R - R[m].mean()) / torch.sqrt(R[m].var() + 1e-8)
    # Where the clip binds at ratio 1 (w outside [0.8, 1.2] on the losing side), the token has no gradient.
    clipped = ((A > 0) & (w > 1.2)) | ((A < 0) & (w < 0.8))
    keep = m & ~clipped
    objective = -(w * A * torch.log_softmax(student(ids).logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1))[keep].sum() / m.sum()
    objective.backward()
    for name, param in student.named_parameters():
        torch.testing.assert_close(method.student.state_dict()[name], param.detach() - param.grad, rtol=0, atol=1e-6)


def test_tiny_fit_runs_every_ppo_update_and_leaves_the_teacher_alone() -> None:
    teacher = tiny_teacher()
    teacher_before = state(teacher.model)
    counter = ForwardCounter(teacher.model)
    method = MiniLLM(tiny_lm(0), teacher, OptimizerSpec(name="adamw", lr=3e-3, schedule="cosine"), teacher_mixed_alpha=0.0)
    before = state(method.student)
    trainer = fit(method, tiny_data(train_limit=16), steps=-1, max_epochs=1, callbacks=[counter])
    # 16 blocks of batch 8: two rounds of 4 epochs x 4 minibatches; the teacher scores each round's
    # rollouts and data once, never once per update.
    assert trainer.global_step == 2 * 16 == method.total_updates
    assert method.lr_schedulers().last_epoch == method.total_updates
    assert counter.calls == 2 * 2
    assert any(not torch.equal(v, before[k]) for k, v in method.student.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.model.state_dict().items())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"train/pg_epoch", "train/single_step_rkl_epoch", "train/lm_epoch", "train/reward_epoch"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_a_student_head_wider_than_the_shared_vocabulary_samples_only_shared_ids() -> None:
    """teacher_mixed_alpha = 0 with a padded student head (128 logits, teacher 96): the rollouts come
    from the shared 96 ids only. The student's own `generate` drew from all 128 (an untrained head
    puts ~1/4 of its mass there), which the teacher cannot embed (IndexError)."""
    method = MiniLLM(tiny_lm(0, vocab=128), tiny_teacher(), OptimizerSpec(name="adamw", lr=3e-3, schedule="constant"),
                     teacher_mixed_alpha=0.0, ppo_epochs=1, ppo_minibatches=2)
    sampled = []
    rollouts = method.rollouts

    def recording(prompts):
        sampled.append(rollouts(prompts))
        return sampled[-1]

    method.rollouts = recording
    with pytest.warns(UserWarning, match="differ only by padding"):
        trainer = fit(method, tiny_data(), steps=4)
    ids, mask = torch.cat([i for i, _ in sampled]), torch.cat([m for _, m in sampled])
    assert trainer.global_step == 4 and method.vocab == 96
    assert int(ids.max()) < 96 and int(mask.sum()) > 0


def test_teacher_mixed_fit_with_max_steps_counts_updates() -> None:
    method = MiniLLM(tiny_lm(0), tiny_teacher(), OptimizerSpec(name="adamw", lr=3e-3, schedule="cosine"),
                     ppo_epochs=2, ppo_minibatches=2)
    trainer = fit(method, tiny_data(), steps=6)  # rounds of 4 updates: the second round stops after 2 of them
    assert trainer.global_step == 6 and method.total_updates == 6
    assert method.lr_schedulers().last_epoch == 6  # the cosine schedule is not stepped past its end


def test_minillm_resumes_bit_exactly_from_an_epoch_checkpoint(tmp_path) -> None:
    def build(seed: int):
        return MiniLLM(tiny_lm(seed), tiny_teacher(), OptimizerSpec(name="adamw", lr=3e-3, schedule="cosine"),
                       ppo_epochs=2, ppo_minibatches=2)

    class StopAfterFirstEpoch(L.Callback):  # an interruption: same schedule length as the whole run
        def on_train_epoch_end(self, trainer, module) -> None:
            trainer.should_stop = True

    torch.manual_seed(7)
    whole = build(0)
    fit(whole, tiny_data(train_limit=8, batch_size=4), steps=-1, max_epochs=2)
    torch.manual_seed(7)
    first = build(0)
    trainer = fit(first, tiny_data(train_limit=8, batch_size=4), steps=-1, max_epochs=2, callbacks=[StopAfterFirstEpoch()])
    assert trainer.current_epoch == 1 and trainer.global_step == 8
    trainer.save_checkpoint(tmp_path / "epoch0.ckpt")
    torch.manual_seed(999)
    resumed = build(123)
    fit(resumed, tiny_data(train_limit=8, batch_size=4), steps=-1, max_epochs=2, ckpt_path=tmp_path / "epoch0.ckpt")
    for key, value in whole.student.state_dict().items():
        assert torch.equal(resumed.student.state_dict()[key], value), f"{key} differs after resume"


def test_bad_parameters_give_one_line_errors() -> None:
    _, problems = validate_kwargs(MiniLLM, {"teacher_mixed_alpha": 1.5, "clip_range": 1.0, "ppo_epochs": 0, "gama": 0.9},
                                  owner="method 'minillm'", where="methods.minillm",
                                  injected=frozenset({"student", "teacher", "optimizer"}))
    assert len(problems) == 4 and all("\n" not in p for p in problems)
    text = " ".join(problems)
    assert "teacher_mixed_alpha" in text and "clip_range" in text and "ppo_epochs" in text and "did you mean 'gamma'" in text
    with pytest.raises(ValueError, match="nothing would train"):
        MiniLLM(tiny_lm(0), None, rkl_advantage=False, single_step_decomposition=False, lm_coef=0.0)
    method = MiniLLM(tiny_lm(0), None, ppo_minibatches=16)
    data = tiny_data(batch_size=8, prompt_tokens=0)
    data.setup()
    problems = method.data_problems(data, tiny_teacher().model)
    assert any("prompt_tokens >= 1" in p for p in problems) and any("ppo_minibatches" in p and "8" in p for p in problems)


def test_the_shipped_recipe_validates() -> None:
    """recipes/shakespeare/minillm.yaml, with the method registered here until lm/catalog.py lists it."""
    from anydistill.catalog import load_recipe
    from anydistill.registries import METHODS

    added = "minillm" not in METHODS
    if added:
        METHODS.register("minillm")(MiniLLM)
    try:
        recipe = load_recipe("shakespeare/minillm", ["data.train_limit=8", "data.batch_size=4", "data.eval_limit=4"])
    finally:
        if added:
            METHODS.unregister("minillm")
    component = recipe.methods["minillm"]
    assert component.target is MiniLLM and component.kwargs["teacher_mixed_alpha"] == 0.2
    assert set(recipe.methods) == {"lm-teacher", "lm-sft", "gkd", "minillm"}
