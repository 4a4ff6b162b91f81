"""Parity and closed-form tests of `anydistill.classifier.losses`.

References: torchdistill's `ATLoss` (installed, imported directly); mdistiller's `dkd_loss` and
AT resizing (`mdistiller/distillers/DKD.py`, `AT.py`; not packaged), re-derived here along a
different code path: per-sample loops that delete the target class instead of masking it.
"""

import pytest
import torch
import torch.nn.functional as F

from anydistill.classifier.losses import attention_map, attention_transfer_loss, dkd_loss, hint_loss
from anydistill.losses import kd_kl


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# FitNets hint loss


def test_hint_loss_is_elementwise_mse():
    s, t = _randn(4, 8, 5, 5, seed=1), _randn(4, 8, 5, 5, seed=2)
    torch.testing.assert_close(hint_loss(s, t), ((s - t) ** 2).sum() / s.numel(), rtol=0, atol=1e-12)


def test_hint_loss_requires_matching_shapes():
    with pytest.raises(ValueError, match="The 'student_regressed' argument of hint_loss must have the shape"):
        hint_loss(_randn(4, 8, 5, 5), _randn(4, 16, 5, 5))


# ---------------------------------------------------------------------------------------------
# attention transfer


def _at_pairs(weights):
    return {
        f"pair{i}": {
            "student": {"io": "output", "path": f"layer{i}"},
            "teacher": {"io": "output", "path": f"layer{i}"},
            "weight": w,
        }
        for i, w in enumerate(weights)
    }


def test_attention_transfer_matches_torchdistill_atloss():
    from torchdistill.losses.mid_level import ATLoss

    # Two layer pairs with different channel counts between student and teacher.
    feats_s = [_randn(8, 16, 8, 8, seed=3).relu(), _randn(8, 32, 4, 4, seed=4).relu()]
    feats_t = [_randn(8, 64, 8, 8, seed=5).relu(), _randn(8, 128, 4, 4, seed=6).relu()]
    weights = [1.0, 0.5]
    # mode='code' is the official code's at_loss, which our function implements: no constant
    # factor between the two; the per-pair weights multiply both sides alike.
    reference = ATLoss(_at_pairs(weights), mode="code")
    io_s = {f"layer{i}": {"output": f} for i, f in enumerate(feats_s)}
    io_t = {f"layer{i}": {"output": f} for i, f in enumerate(feats_t)}
    expected = reference(io_s, io_t)
    ours = sum(w * attention_transfer_loss(s, t) for w, s, t in zip(weights, feats_s, feats_t))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_attention_map_equals_paper_channel_sum():
    from torchdistill.losses.mid_level import ATLoss

    # The paper sums |A|^2 over channels, the code averages: the 1/C cancels in the L2 normalisation.
    f = _randn(4, 24, 6, 6, seed=7)
    torch.testing.assert_close(attention_map(f), ATLoss.attention_transfer_paper(f), rtol=0, atol=1e-12)
    assert attention_map(f).shape == (4, 36)
    torch.testing.assert_close(attention_map(f).norm(dim=1), torch.ones(4, dtype=torch.float64))


def test_attention_map_uses_absolute_value_for_odd_p():
    f = _randn(2, 5, 3, 3, seed=8)
    torch.testing.assert_close(attention_map(f, p=3), attention_map(f.abs(), p=3))
    torch.testing.assert_close(attention_map(f, p=2), F.normalize(f.pow(2).mean(1).flatten(1)))


def _mdistiller_single_stage_at_loss(f_s, f_t, p):
    """mdistiller's `single_stage_at_loss` (square maps), transcribed from its source."""
    def _at(feat, p):
        return F.normalize(feat.pow(p).mean(1).reshape(feat.size(0), -1))

    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H:
        f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H:
        f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
    return (_at(f_s, p) - _at(f_t, p)).pow(2).mean()


@pytest.mark.parametrize("s_size,t_size", [(8, 4), (4, 8), (6, 6), (7, 3)])
def test_attention_transfer_pools_the_larger_map(s_size, t_size):
    f_s, f_t = _randn(3, 8, s_size, s_size, seed=9), _randn(3, 16, t_size, t_size, seed=10)
    expected = _mdistiller_single_stage_at_loss(f_s, f_t, 2)
    torch.testing.assert_close(attention_transfer_loss(f_s, f_t), expected, rtol=0, atol=1e-6)


def test_attention_transfer_pools_each_dim_to_the_smaller_size():
    f_s, f_t = _randn(2, 4, 8, 6, seed=11), _randn(2, 4, 4, 12, seed=12)
    expected = (
        attention_map(F.adaptive_avg_pool2d(f_s, (4, 6))) - attention_map(F.adaptive_avg_pool2d(f_t, (4, 6)))
    ).pow(2).mean()
    torch.testing.assert_close(attention_transfer_loss(f_s, f_t), expected)


def test_attention_transfer_validation():
    with pytest.raises(ValueError, match="The 'student_features' argument of attention_transfer_loss"):
        attention_transfer_loss(_randn(2, 4, 8), _randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="same batch size"):
        attention_transfer_loss(_randn(2, 4, 8, 8), _randn(3, 4, 8, 8))
    with pytest.raises(ValueError, match="The 'p' argument of attention_transfer_loss must be"):
        attention_transfer_loss(_randn(2, 4, 8, 8), _randn(2, 4, 8, 8), p=0)
    with pytest.raises(ValueError, match="The 'p' argument of attention_map must be"):
        attention_map(_randn(2, 4, 8, 8), p=-2)


# ---------------------------------------------------------------------------------------------
# decoupled KD


def _kl(p, q):
    return (p * (p.log() - q.log())).sum()


def _dkd_per_sample(logits_s, logits_t, labels, alpha, beta, T):
    """DKD from its definition, one sample at a time, deleting the target class for NCKD."""
    total = 0.0
    for z_s, z_t, y in zip(logits_s, logits_t, labels.tolist()):
        p_s, p_t = torch.softmax(z_s / T, 0), torch.softmax(z_t / T, 0)
        b_s = torch.stack([p_s[y], 1 - p_s[y]])
        b_t = torch.stack([p_t[y], 1 - p_t[y]])
        others = [c for c in range(len(z_s)) if c != y]
        p_hat_s = torch.softmax(z_s[others] / T, 0)
        p_hat_t = torch.softmax(z_t[others] / T, 0)
        total = total + alpha * _kl(b_t, b_s) + beta * _kl(p_hat_t, p_hat_s)
    return total * T**2 / len(labels)


@pytest.mark.parametrize(
    "alpha,beta,temperature", [(1.0, 8.0, 4.0), (1.0, 2.0, 1.0), (0.5, 0.0, 2.0), (0.0, 1.0, 4.0)]
)
def test_dkd_matches_per_sample_derivation(alpha, beta, temperature):
    s, t = 3 * _randn(16, 10, seed=13), 3 * _randn(16, 10, seed=14)
    labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(15))
    expected = _dkd_per_sample(s, t, labels, alpha, beta, temperature)
    ours = dkd_loss(s, t, labels, alpha=alpha, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_dkd_decomposes_kd():
    # Paper Eq. 4, per sample: KD = TCKD + (1 - p_t^(gt)) NCKD, all scaled by T^2.
    T = 4.0
    s, t = 3 * _randn(1, 7, seed=16), 3 * _randn(1, 7, seed=17)
    label = torch.tensor([2])
    weight = 1 - torch.softmax(t / T, 1)[0, 2].item()
    torch.testing.assert_close(
        dkd_loss(s, t, label, alpha=1.0, beta=weight, temperature=T), kd_kl(s, t, temperature=T),
        rtol=0, atol=1e-10,
    )


def test_dkd_is_finite_for_a_confident_student():
    # mdistiller's log(sum of probabilities) gives log(0) here; the log-space form does not.
    s = torch.tensor([[200.0, -200.0, -200.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, -1.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_zero_for_identical_logits_and_validation():
    s = _randn(4, 5, seed=18)
    labels = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(dkd_loss(s, s.clone(), labels), torch.zeros((), dtype=torch.float64))
    message = r"The 'temperature' argument of dkd_loss must be a finite number > 0\. Got -1\."
    with pytest.raises(ValueError, match=message):
        dkd_loss(s, s, labels, temperature=-1)
    with pytest.raises(ValueError, match="The 'beta' argument of dkd_loss"):
        dkd_loss(s, s, labels, beta=-8.0)
    with pytest.raises(ValueError, match="'student_logits' and 'teacher_logits' arguments of dkd_loss"):
        dkd_loss(s, _randn(4, 6), labels)
    with pytest.raises(ValueError, match="The 'labels' argument of dkd_loss"):
        dkd_loss(s, s, labels.float())
    with pytest.raises(ValueError, match="The 'labels' argument of dkd_loss"):
        dkd_loss(s, s, labels[:2])


# ---------------------------------------------------------------------------------------------
# dtypes and gradients, for every loss of this module


def _cases(dtype=torch.float64):
    """name -> (loss of (student, teacher), maker of a student or teacher input from a seed)."""

    def features(seed):
        return _randn(2, 4, 6, 6, seed=seed, dtype=dtype)

    def logits(seed):
        return 3 * _randn(6, 10, seed=seed, dtype=dtype)

    def dkd(s, t):
        return dkd_loss(s, t, torch.arange(6) % 10)

    return {
        "hint_loss": (hint_loss, features),
        "attention_transfer_loss": (attention_transfer_loss, features),
        "dkd_loss": (dkd, logits),
    }


@pytest.mark.parametrize("name", ["hint_loss", "attention_transfer_loss", "dkd_loss"])
def test_bf16_inputs_give_fp32_outputs(name):
    loss, make = _cases(torch.bfloat16)[name]
    s, t = make(19), make(20)
    out = loss(s, t)
    assert out.dtype == torch.float32 and out.ndim == 0
    torch.testing.assert_close(out, loss(s.float(), t.float()), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["hint_loss", "attention_transfer_loss", "dkd_loss"])
def test_gradients_reach_the_student_only(name):
    loss, make = _cases()[name]
    s, t = make(21).requires_grad_(True), make(22).requires_grad_(True)
    loss(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
