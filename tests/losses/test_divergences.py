"""Parity and closed-form tests of `anydistill.losses.divergences`.

References: torchdistill's `KDLoss` (installed, imported directly) and TRL's
`GKDTrainer.generalized_jsd_loss`. TRL is not installed here (it pulls transformers, datasets,
accelerate), so `_trl_generalized_jsd_loss` below re-derives it line by line from TRL's source
(`trl/experimental/gkd/gkd_trainer.py`).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from anydistill.losses import generalized_jsd, kd_kl, logit_mse, mix_with_ce, reverse_kl, tvd

DIVERGENCES = [kd_kl, reverse_kl, generalized_jsd, tvd, logit_mse]


def _logits(*shape, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def _trl_generalized_jsd_loss(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0,
                              reduction="batchmean"):
    """TRL's `generalized_jsd_loss`, transcribed from its source (trl is not installed)."""
    student_logits = student_logits / temperature
    teacher_logits = teacher_logits / temperature
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        beta = torch.tensor(beta, dtype=student_log_probs.dtype, device=student_log_probs.device)
        mixture_log_probs = torch.logsumexp(
            torch.stack([student_log_probs + torch.log1p(-beta), teacher_log_probs + torch.log(beta)]),
            dim=0,
        )
        kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
        kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    if labels is not None:
        mask = labels != -100
        jsd = jsd[mask]
    if reduction == "batchmean":
        return jsd.sum() / mask.sum() if labels is not None else jsd.sum() / jsd.size(0)
    elif reduction == "sum":
        return jsd.sum()
    elif reduction == "mean":
        return jsd.mean()
    else:
        return jsd


# ---------------------------------------------------------------------------------------------
# parity with reference implementations


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_kd_kl_mixed_with_ce_matches_torchdistill_kdloss(temperature, alpha):
    from torchdistill.losses.mid_level import KDLoss

    s, t = _logits(16, 10, seed=1), _logits(16, 10, seed=2)
    labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    # torchdistill's alpha weights the cross-entropy and beta (default 1 - alpha) the soft term;
    # ours weights the soft term, so its alpha is our 1 - alpha.
    reference = KDLoss(
        student_module_path=".", student_module_io="output",
        teacher_module_path=".", teacher_module_io="output",
        temperature=temperature, alpha=1 - alpha, reduction="batchmean",
    )
    expected = reference({".": {"output": s}}, {".": {"output": t}}, labels)
    ours = mix_with_ce(kd_kl(s, t, temperature=temperature), s, labels, alpha=alpha)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 0.9, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_matches_trl(beta, temperature):
    # [N, V] rows: TRL's batchmean divides by size(0) = N, the number of rows, as ours does.
    s, t = _logits(32, 50, seed=4), _logits(32, 50, seed=5)
    for reduction in ("batchmean", "sum"):
        expected = _trl_generalized_jsd_loss(s, t, beta=beta, temperature=temperature, reduction=reduction)
        ours = generalized_jsd(s, t, beta=beta, temperature=temperature, reduction=reduction)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    per_element = _trl_generalized_jsd_loss(s, t, beta=beta, temperature=temperature, reduction="none")
    torch.testing.assert_close(
        generalized_jsd(s, t, beta=beta, temperature=temperature, reduction="none"),
        per_element.sum(-1), rtol=0, atol=1e-6,
    )


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_matches_trl_with_label_mask(beta):
    # [B, L, V] with padding: TRL masks by labels and divides by the number of kept tokens,
    # which is generalized_jsd on the kept rows.
    s, t = _logits(4, 7, 30, seed=6), _logits(4, 7, 30, seed=7)
    labels = torch.randint(0, 30, (4, 7), generator=torch.Generator().manual_seed(8))
    labels[:, :3] = -100
    keep = labels != -100
    expected = _trl_generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=0.9)
    ours = generalized_jsd(s[keep], t[keep], beta=beta, temperature=0.9)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_generalized_jsd_matches_trl_in_fp32():
    s, t = _logits(8, 100, seed=9, dtype=torch.float32), _logits(8, 100, seed=10, dtype=torch.float32)
    expected = _trl_generalized_jsd_loss(s, t, beta=0.5, temperature=2.0)
    ours = generalized_jsd(s, t, beta=0.5, temperature=2.0)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_jsd_endpoints_are_forward_and_reverse_kl(temperature):
    s, t = _logits(12, 20, seed=11), _logits(12, 20, seed=12)
    torch.testing.assert_close(
        generalized_jsd(s, t, beta=0.0, temperature=temperature),
        kd_kl(s, t, temperature=temperature, scale_by_t2=False), rtol=0, atol=1e-6,
    )
    torch.testing.assert_close(
        generalized_jsd(s, t, beta=1.0, temperature=temperature),
        reverse_kl(s, t, temperature=temperature), rtol=0, atol=1e-6,
    )


def test_kl_against_explicit_sum_and_t2_scaling():
    s, t = _logits(6, 9, seed=13), _logits(6, 9, seed=14)
    T = 2.5
    p_s, p_t = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
    forward = (p_t * (p_t.log() - p_s.log())).sum(-1)
    backward = (p_s * (p_s.log() - p_t.log())).sum(-1)
    torch.testing.assert_close(kd_kl(s, t, temperature=T, reduction="none"), T**2 * forward)
    torch.testing.assert_close(kd_kl(s, t, temperature=T, scale_by_t2=False, reduction="none"), forward)
    torch.testing.assert_close(reverse_kl(s, t, temperature=T, reduction="none"), backward)
    torch.testing.assert_close(
        reverse_kl(s, t, temperature=T, scale_by_t2=True, reduction="none"), T**2 * backward
    )


def test_symmetric_jsd_is_bounded_by_log2_and_tvd_by_one():
    # Nearly one-hot, disjoint distributions reach both bounds.
    s = torch.full((3, 5), -50.0, dtype=torch.float64)
    t = s.clone()
    s[:, 0] = 50.0
    t[:, 1] = 50.0
    log2 = torch.full((3,), math.log(2), dtype=torch.float64)
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.5, reduction="none"), log2)
    torch.testing.assert_close(tvd(s, t, reduction="none"), torch.ones(3, dtype=torch.float64))


def test_tvd_in_unit_interval_and_matches_explicit_sum():
    s, t = _logits(64, 11, seed=15), _logits(64, 11, seed=16)
    per_row = tvd(s, t, reduction="none")
    assert per_row.min() >= 0 and per_row.max() <= 1
    expected = 0.5 * (torch.softmax(t, -1) - torch.softmax(s, -1)).abs().sum(-1)
    torch.testing.assert_close(per_row, expected)


def test_logit_mse_batchmean_is_elementwise_mse():
    s, t = _logits(5, 4, 8, seed=17), _logits(5, 4, 8, seed=18)
    torch.testing.assert_close(logit_mse(s, t), F.mse_loss(s, t))
    torch.testing.assert_close(logit_mse(s, t, reduction="none"), (s - t).pow(2).mean(-1))


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_identical_logits_give_zero(loss):
    s = _logits(4, 6, 13, seed=19)
    torch.testing.assert_close(loss(s, s.clone(), reduction="sum"), torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize("shape", [(8, 10), (3, 5, 17)])
def test_reductions_and_shapes(loss, shape):
    s, t = _logits(*shape, seed=20), _logits(*shape, seed=21)
    per_row = loss(s, t, reduction="none")
    assert per_row.shape == shape[:-1]
    rows = math.prod(shape[:-1])
    torch.testing.assert_close(loss(s, t, reduction="sum"), per_row.sum())
    torch.testing.assert_close(loss(s, t), per_row.sum() / rows)
    # A language model's [B, L, V] is the same as its flattened [B*L, V] tokens.
    flat = loss(s.reshape(-1, shape[-1]), t.reshape(-1, shape[-1]), reduction="none")
    torch.testing.assert_close(flat, per_row.reshape(-1))


def test_mix_with_ce_endpoints_and_lm_shapes():
    s, t = _logits(2, 5, 11, seed=22), _logits(2, 5, 11, seed=23)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(24))
    distill = kd_kl(s, t, temperature=2.0)
    ce = F.cross_entropy(s.reshape(-1, 11), labels.reshape(-1))
    torch.testing.assert_close(mix_with_ce(distill, s, labels, alpha=1.0), distill)
    torch.testing.assert_close(mix_with_ce(distill, s, labels, alpha=0.0), ce)
    torch.testing.assert_close(mix_with_ce(distill, s, labels, alpha=0.3), 0.3 * distill + 0.7 * ce)


# ---------------------------------------------------------------------------------------------
# dtypes, gradients, validation


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_bf16_inputs_give_fp32_outputs(loss):
    s = _logits(4, 3, 16, seed=25, dtype=torch.bfloat16)
    t = _logits(4, 3, 16, seed=26, dtype=torch.bfloat16)
    out = loss(s, t)
    assert out.dtype == torch.float32
    # Same value as computing from the (exactly representable) fp32 copies.
    torch.testing.assert_close(out, loss(s.float(), t.float()), rtol=0, atol=0)
    labels = torch.zeros(4, 3, dtype=torch.long)
    assert mix_with_ce(out, s, labels, alpha=0.5).dtype == torch.float32


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_gradients_reach_the_student_only(loss):
    s = _logits(6, 12, seed=27).requires_grad_(True)
    # The teacher forgot no_grad: it must still receive no gradient.
    t = _logits(6, 12, seed=28).requires_grad_(True)
    loss(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", [kd_kl, reverse_kl, generalized_jsd, tvd])
@pytest.mark.parametrize("temperature", [0, -1, float("nan"), float("inf"), True, "2"])
def test_invalid_temperature(loss, temperature):
    s = _logits(2, 3)
    with pytest.raises(ValueError, match=rf"The 'temperature' argument of {loss.__name__} must be"):
        loss(s, s, temperature=temperature)


def test_invalid_temperature_message_format():
    s = _logits(2, 3)
    message = r"^The 'temperature' argument of kd_kl must be a finite number > 0\. Got -1\.$"
    with pytest.raises(ValueError, match=message):
        kd_kl(s, s, temperature=-1)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), None])
def test_invalid_beta(beta):
    s = _logits(2, 3)
    with pytest.raises(ValueError, match="The 'beta' argument of generalized_jsd must be in"):
        generalized_jsd(s, s, beta=beta)


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_shape_mismatch_and_bad_reduction(loss):
    message = f"'student_logits' and 'teacher_logits' arguments of {loss.__name__}"
    with pytest.raises(ValueError, match=message):
        loss(_logits(2, 3), _logits(2, 4))
    with pytest.raises(ValueError, match=f"The 'reduction' argument of {loss.__name__}"):
        loss(_logits(2, 3), _logits(2, 3), reduction="mean")


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as excinfo:
        generalized_jsd(_logits(2, 3), _logits(2, 4), beta=2.0, temperature=0.0, reduction="avg")
    message = str(excinfo.value)
    for name in ("'temperature'", "'beta'", "'reduction'", "'student_logits'"):
        assert name in message


def test_mix_with_ce_validation():
    s = _logits(4, 3)
    labels = torch.zeros(4, dtype=torch.long)
    distill = kd_kl(s, s)
    with pytest.raises(ValueError, match="The 'alpha' argument of mix_with_ce must be in"):
        mix_with_ce(distill, s, labels, alpha=1.5)
    with pytest.raises(ValueError, match="The 'distill_loss' argument of mix_with_ce"):
        mix_with_ce(kd_kl(s, s, reduction="none"), s, labels, alpha=0.5)
    with pytest.raises(ValueError, match="The 'labels' argument of mix_with_ce"):
        mix_with_ce(distill, s, labels[:2], alpha=0.5)
