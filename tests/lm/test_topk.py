"""Tests of `anydistill.lm.topk`: sparsify, densify (tail bucket, temperature), reconstruction KL,
bytes per token."""

import math

import pytest
import torch

from anydistill.lm.topk import SparseTeacher, bytes_per_token, densify, reconstruction_kl, sparsify

N, V = 6, 20


def _logits(*shape, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _peaked(n=N, vocab=V, seed=0):
    """One dominant token per row (90%+ of the mass) over a spread-out tail."""
    z = _logits(n, vocab, scale=1.0, seed=seed)
    z[torch.arange(n), torch.arange(n) % vocab] += 8.0
    return z


def test_sparsify_stores_top_k_and_exact_tail():
    z = _logits(N, V)
    sparse = sparsify(z, k=4)
    log_p = torch.log_softmax(z.double(), -1)
    top, idx = log_p.topk(4, -1)
    assert sparse.k == 4 and sparse.num_tokens == N and sparse.has_tail
    assert torch.equal(sparse.indices, idx)
    torch.testing.assert_close(sparse.logprobs.double(), top, rtol=0, atol=1e-6)
    expected_tail = torch.log1p(-top.exp().sum(-1))
    torch.testing.assert_close(sparse.tail_logprob.double(), expected_tail, rtol=0, atol=1e-6)
    assert not sparsify(z, k=4, tail=False).has_tail


def test_sparsify_flattens_leading_dims_and_chunks():
    z = _logits(2, 3, V)
    a = sparsify(z, k=5)
    b = sparsify(z.reshape(6, V), k=5, chunk_tokens=4)
    assert a.logprobs.shape == (6, 5)
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.indices, b.indices)
    assert torch.equal(a.tail_logprob, b.tail_logprob)
    sparse16 = sparsify(z, k=5, dtype=torch.float16, index_dtype=torch.int32)
    assert sparse16.logprobs.dtype == sparse16.tail_logprob.dtype == torch.float16
    assert sparse16.indices.dtype == torch.int32
    empty = sparsify(z[:0], k=5)
    assert empty.logprobs.shape == (0, 5) and empty.tail_logprob.shape == (0,)


def test_densify_full_k_recovers_the_distribution_at_any_temperature():
    z = _logits(N, V)
    for tail in (True, False):
        sparse = sparsify(z, k=V, tail=tail)
        torch.testing.assert_close(densify(sparse, V), torch.log_softmax(z, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(densify(sparse, V, temperature=2.5), torch.log_softmax(z / 2.5, -1),
                                   rtol=0, atol=1e-6)


def test_densify_with_tail_spreads_the_tail_uniformly():
    z = _logits(N, V)
    k = 5
    sparse = sparsify(z, k=k)
    log_q = densify(sparse, V)
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(N), rtol=0, atol=1e-6)
    torch.testing.assert_close(log_q.gather(-1, sparse.indices), sparse.logprobs, rtol=0, atol=1e-6)
    rest = log_q.scatter(-1, sparse.indices, float("nan"))
    expected = (sparse.tail_logprob - math.log(V - k))[:, None].expand(N, V)
    keep = ~rest.isnan()
    torch.testing.assert_close(rest[keep], expected[keep], rtol=0, atol=1e-6)


def test_densify_without_tail_renormalises_the_top_k():
    z = _logits(N, V)
    sparse = sparsify(z, k=5, tail=False)
    log_q = densify(sparse, V)
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(N), rtol=0, atol=1e-6)
    renormalised = sparse.logprobs - torch.logsumexp(sparse.logprobs, -1, keepdim=True)
    torch.testing.assert_close(log_q.gather(-1, sparse.indices), renormalised, rtol=0, atol=1e-6)
    assert (log_q == float("-inf")).sum() == N * (V - 5)


def test_densify_temperature_is_log_p_over_t_renormalised():
    z = _logits(N, V)
    for tail in (True, False):
        sparse = sparsify(z, k=4, tail=tail)
        base = densify(sparse, V)
        for temperature in (0.5, 2.0):
            expected = torch.log_softmax(base / temperature, -1)
            torch.testing.assert_close(densify(sparse, V, temperature), expected, rtol=0, atol=1e-6)


def test_reconstruction_kl_is_zero_for_full_k():
    z = _logits(N, V)
    for tail in (True, False):
        kl = reconstruction_kl(z, sparsify(z, k=V, tail=tail))
        assert kl.shape == (N,) and kl.abs().max() < 1e-6


def test_reconstruction_kl_decreases_as_k_grows():
    z = _logits(N, V)
    kls = torch.stack([reconstruction_kl(z, sparsify(z, k=k)) for k in range(1, V + 1)])
    assert torch.isfinite(kls).all()
    assert (kls[1:] <= kls[:-1] + 1e-6).all()
    assert (kls[0] > kls[V // 2]).all() and (kls[V // 2] > kls[-2]).all()
    # Without a tail, KL(full || renormalised top-k) is infinite until k = V.
    no_tail = torch.stack([reconstruction_kl(z, sparsify(z, k=k, tail=False)) for k in (1, 5, V - 1, V)])
    assert torch.isinf(no_tail[:3]).all() and no_tail[3].abs().max() < 1e-6


def test_reconstruction_kl_with_tail_matches_closed_form():
    """KL(p || top-k + uniform tail) = r * (log(V - k) - H(tail / r)), r = tail mass."""
    z = _logits(N, V).double()
    k = 6
    p = torch.softmax(z, -1)
    top = p.topk(k, -1)
    rest = p.scatter(-1, top.indices, 0.0)
    r = rest.sum(-1)
    q = rest / r[:, None]
    entropy = -(torch.where(q > 0, q * q.log(), torch.zeros_like(q))).sum(-1)
    expected = r * (math.log(V - k) - entropy)
    torch.testing.assert_close(reconstruction_kl(z.float(), sparsify(z.float(), k=k)).double(), expected,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_tail_bucket_beats_renormalisation_on_peaked_distributions(k):
    z = _peaked(seed=k)
    with_tail, without_tail = sparsify(z, k=k), sparsify(z, k=k, tail=False)
    kl_tail = reconstruction_kl(z, with_tail)
    kl_none = reconstruction_kl(z, without_tail)
    assert torch.isfinite(kl_tail).all() and (kl_tail <= kl_none).all()
    # A finite measure too: total variation to the teacher. Renormalising costs exactly the tail
    # mass r; spreading it uniformly costs at most r.
    p = torch.softmax(z, -1)
    tvd_tail = 0.5 * (densify(with_tail, V).exp() - p).abs().sum(-1)
    tvd_none = 0.5 * (densify(without_tail, V).exp() - p).abs().sum(-1)
    r = with_tail.tail_logprob.exp()
    torch.testing.assert_close(tvd_none, r, rtol=1e-4, atol=1e-6)
    assert (tvd_tail <= tvd_none + 1e-7).all() and (tvd_tail < tvd_none).any()


def test_bytes_per_token_arithmetic():
    z = _logits(N, 100)
    assert bytes_per_token(sparsify(z, k=64, dtype=torch.float16, index_dtype=torch.int32)) == 64 * 6 + 2
    assert bytes_per_token(sparsify(z, k=8, tail=False)) == 8 * (4 + 8)
    assert bytes_per_token(sparsify(z, k=1, dtype=torch.bfloat16)) == 1 * (2 + 8) + 2
    full = sparsify(z, k=100, tail=False, dtype=torch.float16, index_dtype=torch.int32)
    assert bytes_per_token(full) == 100 * (2 + 4)


def test_fp16_storage_still_reconstructs_a_distribution():
    z = _logits(N, V)
    sparse = sparsify(z, k=8, dtype=torch.float16, index_dtype=torch.int32)
    log_q = densify(sparse, V)
    assert log_q.dtype == torch.float32
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(N), rtol=0, atol=1e-6)
    exact = reconstruction_kl(z, sparsify(z, k=8))
    torch.testing.assert_close(reconstruction_kl(z, sparse), exact, rtol=0, atol=5e-3)


def test_validation():
    with pytest.raises(ValueError) as err:
        SparseTeacher(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 4), torch.zeros(2))
    message = str(err.value)
    for needle in ("float16, bfloat16 or float32", "'indices' field", "int32 or int64", "'tail_logprob'"):
        assert needle in message
    with pytest.raises(ValueError, match=r"'k' argument of sparsify must be an int in \[1, V=20\]"):
        sparsify(_logits(N, V), k=21)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        densify(sparsify(_logits(N, V), k=3), vocab_size=4)
    with pytest.raises(ValueError, match="'temperature'"):
        densify(sparsify(_logits(N, V), k=3), V, temperature=0)
    with pytest.raises(ValueError, match="one row per row"):
        reconstruction_kl(_logits(N + 1, V), sparsify(_logits(N, V), k=3))
