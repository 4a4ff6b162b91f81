"""Tests of `anydistill.lm.token_losses`: per-token parity with `anydistill.losses.divergences`,
DistiLLM's skew KLs, chunking, the global normalisation contract, empty masks, sparse teachers, dtypes.

DistiLLM is not installed; `_distillm_skewed_*` below re-derive `jongwooko/distillm`'s
`distillm/losses.py::skewed_forward_kl / skewed_reverse_kl` (probability-space mixture, mean over
`labels != -100`) to pin the mixture convention.
"""

import pytest
import torch
import torch.nn.functional as F

from anydistill.lm.token_losses import DIVERGENCES, normalize, token_ce_loss, token_distill_loss
from anydistill.lm.topk import sparsify
from anydistill.losses.divergences import generalized_jsd, kd_kl, reverse_kl, tvd

B, L, V = 3, 7, 13


def _logits(*shape, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _mask(*shape, p=0.6, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, generator=g) < p
    mask.view(-1)[0] = True
    return mask


def _reference_per_token(s, t, divergence, *, temperature=1.0, beta=0.5, alpha=0.1):
    """Per-token values [..., ] from anydistill.losses.divergences, or in probability space for skew."""
    if divergence == "fkl":
        return kd_kl(s, t, temperature=temperature, scale_by_t2=False, reduction="none")
    if divergence == "rkl":
        return reverse_kl(s, t, temperature=temperature, reduction="none")
    if divergence == "jsd":
        return generalized_jsd(s, t, beta=beta, temperature=temperature, reduction="none")
    if divergence == "tvd":
        return tvd(s, t, temperature=temperature, reduction="none")
    p_s = torch.softmax(s / temperature, -1)
    p_t = torch.softmax(t / temperature, -1)
    if divergence == "skl":
        m = alpha * p_t + (1 - alpha) * p_s
        return (p_t * (p_t.log() - m.log())).sum(-1)
    m = alpha * p_s + (1 - alpha) * p_t  # srkl
    return (p_s * (p_s.log() - m.log())).sum(-1)


def _distillm_skewed_forward_kl(logits, teacher_logits, labels, lam=0.1):
    teacher_probs = F.softmax(teacher_logits, dim=-1)
    student_probs = F.softmax(logits, dim=-1)
    mixed_logprobs = torch.log(lam * teacher_probs + (1 - lam) * student_probs)
    x = (teacher_probs * mixed_logprobs).sum(-1).view(-1)
    mask = (labels != -100).int().view(-1)
    return -(x * mask).sum() / mask.sum()


def _distillm_skewed_reverse_kl(logits, teacher_logits, labels, lam=0.1):
    teacher_probs = F.softmax(teacher_logits, dim=-1)
    student_probs = F.softmax(logits, dim=-1)
    mixed_logprobs = torch.log((1 - lam) * teacher_probs + lam * student_probs)
    student_logprobs = F.log_softmax(logits, dim=-1)
    x = (student_probs * mixed_logprobs - student_probs * student_logprobs).sum(-1).view(-1)
    mask = (labels != -100).int().view(-1)
    return -(x * mask).sum() / mask.sum()


CASES = [
    ("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}), ("skl", {"alpha": 0.1}), ("skl", {"alpha": 0.7}), ("srkl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.7}), ("tvd", {}),
]


# ---------------------------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("divergence,kwargs", CASES)
@pytest.mark.parametrize("temperature,scale_by_t2", [(1.0, False), (2.0, False), (0.7, True)])
def test_matches_direct_per_token_computation(divergence, kwargs, temperature, scale_by_t2):
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    loss_sum, n = token_distill_loss(
        s, t, mask, divergence=divergence, temperature=temperature, scale_by_t2=scale_by_t2,
        chunk_tokens=4, **kwargs,
    )
    per_token = _reference_per_token(s, t, divergence, temperature=temperature, **kwargs)
    expected = per_token[mask].sum() * (temperature**2 if scale_by_t2 else 1.0)
    assert n == int(mask.sum())
    torch.testing.assert_close(loss_sum, expected, rtol=0, atol=1e-6)


def test_fkl_closed_form():
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    p_t = torch.softmax(t / 2, -1)
    expected = (p_t * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1)[mask].sum()
    loss_sum, _ = token_distill_loss(s, t, mask, divergence="fkl", temperature=2.0)
    torch.testing.assert_close(loss_sum, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_skew_follows_distillm_convention(alpha):
    """DistiLLM: SKL mixes alpha * teacher, SRKL mixes alpha * student; its SKL is the cross-entropy."""
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    labels = torch.where(mask, torch.zeros(B, L, dtype=torch.long), torch.full((B, L), -100))
    n = int(mask.sum())
    skl, _ = token_distill_loss(s, t, mask, divergence="skl", alpha=alpha)
    srkl, _ = token_distill_loss(s, t, mask, divergence="srkl", alpha=alpha)
    p_t = torch.softmax(t, -1)
    teacher_entropy = -(p_t * p_t.log()).sum(-1)[mask].sum()
    torch.testing.assert_close(
        (skl + teacher_entropy) / n, _distillm_skewed_forward_kl(s, t, labels, alpha), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(srkl / n, _distillm_skewed_reverse_kl(s, t, labels, alpha), rtol=0, atol=1e-6)


@pytest.mark.parametrize("beta,plain", [(0.0, "fkl"), (1.0, "rkl")])
def test_jsd_endpoints_are_the_kls(beta, plain):
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    jsd, _ = token_distill_loss(s, t, mask, divergence="jsd", beta=beta, temperature=2.0)
    kl, _ = token_distill_loss(s, t, mask, divergence=plain, temperature=2.0)
    torch.testing.assert_close(jsd, kl, rtol=0, atol=1e-6)


@pytest.mark.parametrize("skew,plain", [("skl", "fkl"), ("srkl", "rkl")])
def test_skew_with_alpha_zero_is_plain_kl(skew, plain):
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    skewed, _ = token_distill_loss(s, t, mask, divergence=skew, alpha=0.0, temperature=1.5)
    kl, _ = token_distill_loss(s, t, mask, divergence=plain, temperature=1.5)
    torch.testing.assert_close(skewed, kl, rtol=0, atol=1e-6)


def test_skew_alpha_one_is_zero_and_skew_is_smaller_than_kl():
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    for skew, plain in (("skl", "fkl"), ("srkl", "rkl")):
        zero, _ = token_distill_loss(s, t, mask, divergence=skew, alpha=1.0)
        assert abs(zero.item()) < 1e-12
        skewed, _ = token_distill_loss(s, t, mask, divergence=skew, alpha=0.1)
        kl, _ = token_distill_loss(s, t, mask, divergence=plain)
        assert 0 < skewed.item() < kl.item()  # KL is convex: mixing in p shrinks it


# ---------------------------------------------------------------------------------------------
# chunking, normalisation, empty masks


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("sparse", [False, True])
def test_chunking_invariance(divergence, sparse):
    s0, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    teacher = sparsify(t, k=5) if sparse else t
    n = int(mask.sum())
    values, grads = [], []
    for chunk in (1, 7, n, 4096):
        s = s0.clone().requires_grad_(True)
        loss_sum, count = token_distill_loss(s, teacher, mask, divergence=divergence, chunk_tokens=chunk)
        loss_sum.backward()
        assert count == n
        values.append(loss_sum.detach())
        grads.append(s.grad)
    for value, grad in zip(values[1:], grads[1:]):
        torch.testing.assert_close(value, values[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(grad, grads[0], rtol=0, atol=1e-10)


def _head_and_batch(dtype=torch.float32):
    """A tiny LM head: logits = h @ W, so gradients land on a shared parameter."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(8, V, generator=g, dtype=dtype, requires_grad=True)
    h = torch.randn(4, L, 8, generator=g, dtype=dtype)
    t = torch.randn(4, L, V, generator=g, dtype=dtype) * 2
    mask = torch.zeros(4, L, dtype=torch.bool)
    mask[:2, 1:3] = True  # micro-batch 1: 4 tokens
    mask[2:, 2:] = True  # micro-batch 2: 10 tokens
    return W, h, t, mask


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradient_accumulation_invariance(divergence):
    """One batch normalised by its count == two micro-batches each normalised by the GLOBAL count."""
    W, h, t, mask = _head_and_batch()
    loss_sum, n_global = token_distill_loss(h @ W, t, mask, divergence=divergence)
    normalize(loss_sum, n_global).backward()
    full = W.grad.clone()

    W.grad = None
    counts = [int(mask[:2].sum()), int(mask[2:].sum())]
    assert sum(counts) == n_global and counts[0] != counts[1]
    for part in (slice(0, 2), slice(2, 4)):
        micro_sum, _ = token_distill_loss(h[part] @ W, t[part], mask[part], divergence=divergence)
        normalize(micro_sum, torch.tensor(n_global)).backward()  # e.g. an all-reduced count
    torch.testing.assert_close(W.grad, full, rtol=0, atol=1e-6)

    # Normalising each micro-batch by its own count (the bug of trl#4719) gives another gradient.
    W.grad = None
    for part in (slice(0, 2), slice(2, 4)):
        micro_sum, micro_n = token_distill_loss(h[part] @ W, t[part], mask[part], divergence=divergence)
        (normalize(micro_sum, micro_n) / 2).backward()
    assert not torch.allclose(W.grad, full, atol=1e-4)


def test_ddp_world_size_undoes_gradient_averaging():
    """Two simulated ranks: DDP averages their gradients; world_size=2 makes it the global mean."""
    W, h, t, mask = _head_and_batch()
    loss_sum, n_global = token_distill_loss(h @ W, t, mask, divergence="fkl")
    full = torch.autograd.grad(normalize(loss_sum, n_global), W)[0]
    rank_grads = []
    for part in (slice(0, 2), slice(2, 4)):
        rank_sum, _ = token_distill_loss(h[part] @ W, t[part], mask[part], divergence="fkl")
        rank_grads.append(torch.autograd.grad(normalize(rank_sum, n_global, world_size=2), W)[0])
    torch.testing.assert_close((rank_grads[0] + rank_grads[1]) / 2, full, rtol=0, atol=1e-6)


def test_normalizer_argument_is_normalize():
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    loss_sum, n = token_distill_loss(s, t, mask, divergence="jsd")
    loss, n2 = token_distill_loss(s, t, mask, divergence="jsd", normalizer=40)
    assert n2 == n
    torch.testing.assert_close(loss, loss_sum / 40)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("sparse", [False, True])
def test_empty_mask_gives_zero_and_no_nan(divergence, sparse):
    s = _logits(B, L, V, dtype=torch.float32).requires_grad_(True)
    t = _logits(B, L, V, seed=5, dtype=torch.float32)
    mask = torch.zeros(B, L, dtype=torch.bool)
    teacher = sparsify(t, k=4) if sparse else t
    loss_sum, n = token_distill_loss(s, teacher, mask, divergence=divergence)
    assert n == 0 and loss_sum.item() == 0.0 and loss_sum.dtype == torch.float32
    loss = normalize(loss_sum, n)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and (s.grad == 0).all()
    assert normalize(loss_sum, torch.tensor(0)).item() == 0.0
    ce_sum, ce_n = token_ce_loss(s, torch.zeros(B, L, dtype=torch.long), mask)
    assert ce_n == 0 and normalize(ce_sum, 0).item() == 0.0


# ---------------------------------------------------------------------------------------------
# sparse teachers


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_dense_and_full_sparse_teacher_agree(divergence, temperature):
    s0, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    results = []
    for teacher in (t, sparsify(t, k=V), sparsify(t, k=V, tail=False)):
        s = s0.clone().requires_grad_(True)
        loss_sum, _ = token_distill_loss(s, teacher, mask, divergence=divergence, temperature=temperature)
        loss_sum.backward()
        results.append((loss_sum.detach(), s.grad))
    for value, grad in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_sparse_rows_per_position_or_per_masked_token(divergence):
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    every_position = sparsify(t, k=4)
    masked_only = sparsify(t[mask], k=4)  # as a cache of completion tokens stores them
    a, n_a = token_distill_loss(s, every_position, mask, divergence=divergence, chunk_tokens=3)
    b, n_b = token_distill_loss(s, masked_only, mask, divergence=divergence, chunk_tokens=3)
    assert n_a == n_b
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert torch.isfinite(a)


def test_sparse_teacher_without_tail_is_finite_for_mode_covering_divergences():
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    sparse = sparsify(t, k=3, tail=False)
    for divergence, kwargs in [("fkl", {}), ("jsd", {"beta": 0.9}), ("skl", {}), ("srkl", {}), ("tvd", {})]:
        s_ = s.clone().requires_grad_(True)
        loss_sum, _ = token_distill_loss(s_, sparse, mask, divergence=divergence, temperature=0.5, **kwargs)
        loss_sum.backward()
        assert torch.isfinite(loss_sum) and torch.isfinite(s_.grad).all(), divergence


@pytest.mark.parametrize("divergence,kwargs", [("rkl", {}), ("jsd", {"beta": 1.0}), ("srkl", {"alpha": 0.0})])
def test_infinite_divergence_against_tailless_sparse_teacher_is_refused(divergence, kwargs):
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    with pytest.raises(ValueError, match="tail=True"):
        token_distill_loss(s, sparsify(t, k=3, tail=False), mask, divergence=divergence, **kwargs)
    loss_sum, _ = token_distill_loss(s, sparsify(t, k=3), mask, divergence=divergence, **kwargs)
    assert torch.isfinite(loss_sum)


def test_fp16_sparse_teacher_is_close_to_dense():
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    sparse = sparsify(t, k=V, dtype=torch.float16, index_dtype=torch.int32)
    dense, _ = token_distill_loss(s, t, mask, divergence="fkl")
    approx, _ = token_distill_loss(s, sparse, mask, divergence="fkl")
    torch.testing.assert_close(approx, dense, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# dtypes, memory, teacher, CE


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_bf16_logits_give_fp32_loss(divergence):
    s = _logits(B, L, V, dtype=torch.bfloat16).requires_grad_(True)
    t = _logits(B, L, V, seed=5, dtype=torch.bfloat16)
    mask = _mask(B, L)
    loss_sum, _ = token_distill_loss(s, t, mask, divergence=divergence, chunk_tokens=4)
    assert loss_sum.dtype == torch.float32 and torch.isfinite(loss_sum)
    expected = _reference_per_token(s.detach().float(), t.float(), divergence)[mask].sum()
    torch.testing.assert_close(loss_sum.detach(), expected, rtol=1e-5, atol=1e-5)
    loss_sum.backward()
    assert s.grad.dtype == torch.bfloat16 and torch.isfinite(s.grad.float()).all()
    sparse_sum, _ = token_distill_loss(s, sparsify(t, k=4), mask, divergence=divergence)
    assert sparse_sum.dtype == torch.float32


@pytest.mark.parametrize("sparse", [False, True])
def test_graph_holds_no_fp32_tensor_larger_than_a_chunk(sparse):
    """Activation checkpointing per chunk: the graph keeps no fp32 activations of size N x V."""
    s = _logits(4, 16, 32, dtype=torch.bfloat16).requires_grad_(True)
    t = _logits(4, 16, 32, seed=5, dtype=torch.bfloat16)
    mask = torch.ones(4, 16, dtype=torch.bool)
    teacher = sparsify(t, k=6) if sparse else t
    # Checkpointing keeps references to its inputs (the caller's own tensors, no copies): skip them.
    inputs = {s.data_ptr(), t.data_ptr()}
    if sparse:
        inputs |= {teacher.logprobs.data_ptr(), teacher.tail_logprob.data_ptr()}
    saved = []

    def pack(x):
        if x.dtype in (torch.float32, torch.float64) and x.data_ptr() not in inputs:
            saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss_sum, _ = token_distill_loss(s, teacher, mask, divergence="jsd", chunk_tokens=8)
    # In total, not even one [N, V] fp32 tensor (without checkpointing it is several).
    assert sum(saved) < 4 * 16 * 32
    loss_sum.backward()
    assert torch.isfinite(s.grad.float()).all()


def test_teacher_receives_no_gradient():
    s = _logits(B, L, V).requires_grad_(True)
    t = _logits(B, L, V, seed=5).requires_grad_(True)
    loss_sum, _ = token_distill_loss(s, t, _mask(B, L), divergence="jsd")
    loss_sum.backward()
    assert t.grad is None and s.grad is not None


def test_ce_matches_cross_entropy_and_mixes():
    s, t, mask = _logits(B, L, V), _logits(B, L, V, seed=5), _mask(B, L)
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, V, (B, L), generator=g)
    ignored = torch.where(mask, labels, torch.full_like(labels, -100))
    expected = F.cross_entropy(s.reshape(-1, V), ignored.reshape(-1), reduction="sum")
    for chunk in (1, 5, 4096):
        ce_sum, n = token_ce_loss(s, ignored, mask, chunk_tokens=chunk)
        assert n == int(mask.sum())
        torch.testing.assert_close(ce_sum, expected, rtol=0, atol=1e-10)
    # The usual mixture, both halves normalised by the same global count.
    kd_sum, _ = token_distill_loss(s, t, mask, divergence="fkl")
    mixed = 0.5 * normalize(ce_sum, n) + 0.5 * normalize(kd_sum, n)
    torch.testing.assert_close(mixed, 0.5 * expected / n + 0.5 * kd_sum / n)
    s_bf16 = s.to(torch.bfloat16).requires_grad_(True)
    ce_bf16, _ = token_ce_loss(s_bf16, labels, mask)
    ce_bf16.backward()
    assert ce_bf16.dtype == torch.float32 and s_bf16.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# validation


def test_all_problems_reported_at_once_with_a_suggestion():
    s, t = _logits(B, L, V), _logits(B, L, V, seed=5)
    with pytest.raises(ValueError) as err:
        token_distill_loss(
            s, t, torch.ones(B, L), divergence="fkld", temperature=0, beta=2, alpha=-1, chunk_tokens=0
        )
    message = str(err.value)
    for needle in ("'mask'", "Did you mean 'fkl'?", "'temperature'", "'beta'", "'alpha'", "'chunk_tokens'"):
        assert needle in message


def test_vocab_mismatch_names_the_fix():
    s, mask = _logits(B, L, V), _mask(B, L)
    with pytest.raises(ValueError, match=r"teacher_logits\[\.\.\., :V\]"):
        token_distill_loss(s, _logits(B, L, V + 3), mask, divergence="fkl")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_distill_loss(s[..., :5], sparsify(_logits(B, L, V), k=3), mask, divergence="fkl")
    with pytest.raises(ValueError, match="one row per position"):
        token_distill_loss(s, sparsify(_logits(2, V), k=3), mask, divergence="fkl")


def test_normalize_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_tokens_global"):
        normalize(torch.tensor(1.0), -1)
    with pytest.raises(ValueError, match="world_size"):
        normalize(torch.tensor(1.0), 3, world_size=0)
