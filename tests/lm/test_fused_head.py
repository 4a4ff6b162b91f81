"""Tests of `anydistill.lm.fused_head`: parity with the unfused `token_distill_loss` / `token_ce_loss`
fed ``h @ W.T + b`` (loss, and gradients of the hidden states, head weight and bias), for every
divergence, temperatures, T^2, masks (empty ones too), chunk sizes that do not divide the token
count, the normaliser, dense / hidden-state / sparse teachers, float64 (tight) and float32 (loose)."""

import pytest
import torch

from anydistill.lm.fused_head import (
    fused_kd_ce_loss,
    fused_token_ce_loss,
    fused_token_distill_loss,
)
from anydistill.lm.token_losses import normalize, token_ce_loss, token_distill_loss
from anydistill.lm.topk import sparsify

B, L, H, HT, V = 3, 7, 8, 6, 13
TIGHT = {"rtol": 0, "atol": 1e-10}  # float64: the two paths differ only in summation order
LOOSE = {"rtol": 1e-4, "atol": 1e-5}  # float32

CASES = [
    ("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}), ("skl", {"alpha": 0.1}), ("skl", {"alpha": 0.0}), ("srkl", {"alpha": 0.1}),
    ("srkl", {"alpha": 1.0}), ("tvd", {}),
]


def _rand(*shape, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _mask(p=0.6, seed=1, shape=(B, L)):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, generator=g) < p
    mask.view(-1)[0] = True
    return mask


def _student(dtype=torch.float64, bias=True, vocab=V, hidden=H, shape=(B, L)):
    """Hidden states and a head whose logits have a spread of a few nats (peaked distributions)."""
    h = _rand(*shape, hidden, dtype=dtype, seed=2).requires_grad_(True)
    W = _rand(vocab, hidden, dtype=dtype, scale=1.0, seed=3).requires_grad_(True)
    b = _rand(vocab, dtype=dtype, seed=4).requires_grad_(True) if bias else None
    return h, W, b


def _teacher(dtype=torch.float64, vocab=V, shape=(B, L)):
    return _rand(*shape, HT, dtype=dtype, seed=5), _rand(vocab, HT, dtype=dtype, scale=1.2, seed=6), _rand(vocab, dtype=dtype, seed=7)


def _params(h, W, b):
    return [p for p in (h, W, b) if p is not None]


def _unfused(h, W, b, teacher, mask, **kwargs):
    logits = h @ W.T + (b if b is not None else 0)
    loss, n = token_distill_loss(logits, teacher, mask, **kwargs)
    return loss, n, torch.autograd.grad(loss, _params(h, W, b))


def _fused(h, W, b, teacher, Wt, bt, mask, **kwargs):
    loss, n = fused_token_distill_loss(h, W, b, teacher, Wt, bt, mask, **kwargs)
    return loss, n, torch.autograd.grad(loss, _params(h, W, b))


def _assert_same(fused, unfused, tol):
    (loss_f, n_f, grads_f), (loss_u, n_u, grads_u) = fused, unfused
    assert n_f == n_u
    assert loss_f.dtype == loss_u.dtype
    torch.testing.assert_close(loss_f, loss_u, **tol)
    for grad_f, grad_u in zip(grads_f, grads_u):
        assert grad_f.dtype == grad_u.dtype
        torch.testing.assert_close(grad_f, grad_u, **tol)


# ---------------------------------------------------------------------------------------------
# parity with the unfused loss


@pytest.mark.parametrize("divergence,kwargs", CASES)
@pytest.mark.parametrize("temperature,scale_by_t2", [(1.0, False), (2.0, False), (0.7, True)])
def test_parity_teacher_hidden_float64(divergence, kwargs, temperature, scale_by_t2):
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    mask = _mask()
    options = dict(divergence=divergence, temperature=temperature, scale_by_t2=scale_by_t2, **kwargs)
    # 4 does not divide the masked-token count (13 here): the last chunk is short.
    assert int(mask.sum()) % 4
    fused = _fused(h, W, b, ht, Wt, bt, mask, chunk_tokens=4, **options)
    unfused = _unfused(h, W, b, ht @ Wt.T + bt, mask, **options)
    _assert_same(fused, unfused, TIGHT)


@pytest.mark.parametrize("divergence,kwargs", CASES)
def test_parity_float32(divergence, kwargs):
    vocab, hidden = 301, 32
    h, W, b = _student(torch.float32, vocab=vocab, hidden=hidden)
    ht, Wt, bt = _teacher(torch.float32, vocab=vocab)
    mask = _mask()
    options = dict(divergence=divergence, temperature=1.3, scale_by_t2=True, **kwargs)
    fused = _fused(h, W, b, ht, Wt, bt, mask, chunk_tokens=5, **options)
    unfused = _unfused(h, W, b, ht @ Wt.T + bt, mask, **options)
    _assert_same(fused, unfused, LOOSE)


@pytest.mark.parametrize("divergence", ["fkl", "jsd", "srkl", "tvd"])
def test_parity_dense_teacher_logits_without_bias(divergence):
    h, W, _ = _student(bias=False)
    ht, Wt, bt = _teacher()
    teacher_logits = ht @ Wt.T + bt
    mask = _mask(seed=3)
    fused = _fused(h, W, None, teacher_logits, None, None, mask, divergence=divergence, temperature=1.5, chunk_tokens=3)
    unfused = _unfused(h, W, None, teacher_logits, mask, divergence=divergence, temperature=1.5)
    _assert_same(fused, unfused, TIGHT)


@pytest.mark.parametrize("divergence,kwargs", [("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.9}), ("skl", {}), ("srkl", {}), ("tvd", {})])
@pytest.mark.parametrize("rows", ["positions", "masked"])
def test_parity_sparse_teacher(divergence, kwargs, rows):
    """The top-k cache path: a SparseTeacher (tail bucket) with the student side fused."""
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    mask = _mask(seed=4)
    logits = ht @ Wt.T + bt
    sparse = sparsify(logits if rows == "positions" else logits[mask], k=4, tail=True)
    options = dict(divergence=divergence, temperature=0.8, scale_by_t2=True, **kwargs)
    fused = _fused(h, W, b, sparse, None, None, mask, chunk_tokens=5, **options)
    unfused = _unfused(h, W, b, sparse, mask, **options)
    _assert_same(fused, unfused, TIGHT)


def test_parity_sparse_teacher_without_tail():
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    mask = _mask(seed=4)
    sparse = sparsify(ht @ Wt.T + bt, k=3, tail=False)
    fused = _fused(h, W, b, sparse, None, None, mask, divergence="skl", chunk_tokens=2)
    unfused = _unfused(h, W, b, sparse, mask, divergence="skl")
    _assert_same(fused, unfused, TIGHT)


@pytest.mark.parametrize("normalizer", [40, torch.tensor(40), 0])
def test_normalizer(normalizer):
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    mask = _mask()
    options = dict(divergence="jsd", beta=0.3, normalizer=normalizer)
    fused = _fused(h, W, b, ht, Wt, bt, mask, chunk_tokens=6, **options)
    unfused = _unfused(h, W, b, ht @ Wt.T + bt, mask, **options)
    _assert_same(fused, unfused, TIGHT)
    loss_sum, _ = fused_token_distill_loss(h, W, b, ht, Wt, bt, mask, divergence="jsd", beta=0.3)
    torch.testing.assert_close(fused[0], normalize(loss_sum, normalizer), **TIGHT)


def test_flat_inputs_and_full_and_padded_masks():
    """[B*L, H] hidden states with a [B, L] mask; a mask of all positions; a padding-only row."""
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    for mask in (torch.ones(B, L, dtype=torch.bool), _mask(seed=9)):
        mask = mask.clone()
        mask[1] = False  # a sequence that is all padding
        flat = h.reshape(B * L, H)
        fused = _fused(flat, W, b, ht.reshape(B * L, HT), Wt, bt, mask, divergence="fkl", chunk_tokens=4)
        unfused = _unfused(flat, W, b, (ht @ Wt.T + bt).reshape(B * L, V), mask.reshape(-1), divergence="fkl")
        _assert_same(fused, unfused, TIGHT)
        assert fused[2][0][1 * L : 2 * L].abs().max() == 0  # no gradient reaches padding


@pytest.mark.parametrize("teacher_kind", ["hidden", "logits", "sparse"])
def test_empty_mask_gives_zero_connected_loss_and_zero_grads(teacher_kind):
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    mask = torch.zeros(B, L, dtype=torch.bool)
    logits = ht @ Wt.T + bt
    teacher, t_weight, t_bias = {
        "hidden": (ht, Wt, bt), "logits": (logits, None, None), "sparse": (sparsify(logits, k=3), None, None),
    }[teacher_kind]
    loss, n = fused_token_distill_loss(h, W, b, teacher, t_weight, t_bias, mask, divergence="rkl" if teacher_kind != "sparse" else "fkl", normalizer=0)
    assert n == 0 and loss.item() == 0 and loss.requires_grad
    loss.backward()
    for p in (h, W, b):
        assert p.grad is not None and p.grad.abs().max() == 0


# ---------------------------------------------------------------------------------------------
# gradients and autograd behaviour


def test_frozen_hidden_states_and_scaled_backward():
    """Only the head trains (hidden states without grad), and backward scales by the incoming gradient."""
    h, W, b = _student()
    h = h.detach()
    ht, Wt, bt = _teacher()
    mask = _mask()
    loss, _ = fused_token_distill_loss(h, W, b, ht, Wt, bt, mask, divergence="fkl", chunk_tokens=4)
    (3.0 * loss).backward(retain_graph=True)
    grad_w, grad_b = W.grad.clone(), b.grad.clone()
    W.grad = b.grad = None
    ref, _ = token_distill_loss(h @ W.T + b, ht @ Wt.T + bt, mask, divergence="fkl")
    (3.0 * ref).backward()
    torch.testing.assert_close(grad_w, W.grad, **TIGHT)
    torch.testing.assert_close(grad_b, b.grad, **TIGHT)
    W.grad = b.grad = None
    loss.backward()  # the retained graph: same gradients again, unscaled
    torch.testing.assert_close(W.grad, grad_w / 3, **TIGHT)


def test_no_grad_gives_the_value_without_a_graph():
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    mask = _mask()
    with torch.no_grad():
        loss, _ = fused_token_distill_loss(h, W, b, ht, Wt, bt, mask, divergence="tvd", chunk_tokens=5)
        ref, _ = token_distill_loss(h @ W.T + b, ht @ Wt.T + bt, mask, divergence="tvd")
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ref, **TIGHT)


def test_teacher_from_inference_mode_and_teacher_grads_stay_off():
    """lm-kd's teacher runs under inference_mode; a teacher tensor that requires grad gets none."""
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    with torch.inference_mode():
        ht_inference = ht.clone()
    Wt_grad = Wt.clone().requires_grad_(True)
    mask = _mask()
    loss, _ = fused_token_distill_loss(h, W, b, ht_inference, Wt_grad, bt, mask, divergence="fkl")
    loss.backward()
    assert Wt_grad.grad is None and h.grad is not None


def test_bfloat16_runs_in_fp32_and_returns_grads_in_param_dtypes():
    h, W, b = _student(torch.bfloat16, vocab=64, hidden=16)
    ht, Wt, bt = _teacher(torch.bfloat16, vocab=64)
    mask = _mask()
    loss, _ = fused_token_distill_loss(h, W, b, ht, Wt, bt, mask, divergence="jsd", chunk_tokens=4)
    loss.backward()
    assert loss.dtype == torch.float32 and (h.grad.dtype, W.grad.dtype, b.grad.dtype) == (torch.bfloat16,) * 3
    ref = _unfused(*(p.detach().double().requires_grad_(True) for p in (h, W, b)),
                   (ht @ Wt.T + bt).double(), mask, divergence="jsd")
    torch.testing.assert_close(loss.double(), ref[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(W.grad.double(), ref[2][1], rtol=5e-2, atol=5e-2)


def test_autocast_bf16_matches_the_unfused_loss_under_autocast():
    """Lightning's bf16-mixed: fp32 weights, bf16 logits inside autocast; gradients come back fp32."""
    h, W, b = _student(torch.float32, vocab=64, hidden=16)
    ht, Wt, bt = _teacher(torch.float32, vocab=64)
    mask = _mask()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _fused(h, W, b, ht, Wt, bt, mask, divergence="fkl", chunk_tokens=4)
        teacher_logits = torch.nn.functional.linear(ht, Wt, bt)
        logits = torch.nn.functional.linear(h, W, b)
        loss, n = token_distill_loss(logits, teacher_logits, mask, divergence="fkl")
        unfused = (loss, n, torch.autograd.grad(loss, (h, W, b)))
    assert all(g.dtype == torch.float32 for g in fused[2])
    _assert_same(fused, unfused, {"rtol": 2e-2, "atol": 2e-2})


# ---------------------------------------------------------------------------------------------
# cross-entropy


def _labels(mask):
    g = torch.Generator().manual_seed(11)
    labels = torch.randint(0, V, mask.shape, generator=g)
    return torch.where(mask, labels, torch.full_like(labels, -100))


def test_fused_ce_matches_token_ce_loss():
    h, W, b = _student()
    mask = _mask()
    labels = _labels(mask)
    ce, n = fused_token_ce_loss(h, W, b, labels, mask, chunk_tokens=4)
    grads = torch.autograd.grad(ce, (h, W, b))
    ref, n_ref = token_ce_loss(h @ W.T + b, labels, mask)
    _assert_same((ce, n, grads), (ref, n_ref, torch.autograd.grad(ref, (h, W, b))), TIGHT)


@pytest.mark.parametrize("kd_weight", [0.0, 0.3, 1.0])
def test_fused_kd_ce_is_lm_kd_mixture(kd_weight):
    """One pass gives lm-kd's alpha * kd_sum + (1 - alpha) * ce_sum, and both sums for logging."""
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    mask = _mask()
    labels = _labels(mask)
    options = dict(divergence="skl", alpha=0.2, temperature=2.0, scale_by_t2=True)
    loss, kd_sum, ce_sum, n = fused_kd_ce_loss(h, W, b, ht, Wt, bt, labels, mask, kd_weight=kd_weight, chunk_tokens=4, **options)
    grads = torch.autograd.grad(loss, (h, W, b))
    logits = h @ W.T + b
    kd_ref, n_ref = token_distill_loss(logits, ht @ Wt.T + bt, mask, **options)
    ce_ref, _ = token_ce_loss(logits, labels, mask)
    ref = kd_weight * kd_ref + (1 - kd_weight) * ce_ref
    _assert_same((loss, n, grads), (ref, n_ref, torch.autograd.grad(ref, (h, W, b))), TIGHT)
    assert not kd_sum.requires_grad and not ce_sum.requires_grad
    torch.testing.assert_close(kd_sum, kd_ref.detach(), **TIGHT)
    torch.testing.assert_close(ce_sum, ce_ref.detach(), **TIGHT)


# ---------------------------------------------------------------------------------------------
# validation


def test_every_problem_reported_at_once():
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    with pytest.raises(ValueError) as error:
        fused_token_distill_loss(h, W[:, :4], b, ht, Wt[:5], bt, _mask().int(), divergence="jds", temperature=0.0, chunk_tokens=0)
    text = str(error.value)
    for needle in ("'divergence'", "Did you mean 'jsd'", "'temperature'", "'chunk_tokens'", "'mask'", "'student_weight'"):
        assert needle in text


def test_vocabulary_mismatch_names_the_slice():
    h, W, b = _student()
    ht, Wt, _ = _teacher(vocab=V + 3)
    with pytest.raises(ValueError, match=r"weight\[:V\]"):
        fused_token_distill_loss(h, W, b, ht, Wt, None, _mask(), divergence="fkl")
    with pytest.raises(ValueError, match="V = 13 logits"):
        fused_token_distill_loss(h, W, b, ht @ Wt.T, None, None, _mask(), divergence="fkl")


def test_dtype_and_shape_problems():
    h, W, b = _student()
    ht, Wt, bt = _teacher()
    with pytest.raises(ValueError, match="dtype of 'student_hidden'"):
        fused_token_distill_loss(h, W.float(), b, ht, Wt, bt, _mask(), divergence="fkl")
    with pytest.raises(ValueError, match=r"\[\*mask.shape, H\]"):
        fused_token_distill_loss(h[:, :-1], W, b, ht, Wt, bt, _mask(), divergence="fkl")
    with pytest.raises(ValueError, match="'labels'"):
        fused_token_ce_loss(h, W, b, _labels(_mask()).float(), _mask())


# ---------------------------------------------------------------------------------------------
# on transformers models: what an lm method would pass


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_transformers_head_gives_the_unfused_parameter_grads(family):
    """base_model's last hidden states + get_output_embeddings().weight reproduce lm-kd's loss and the
    gradients of every student parameter (the body's too), teacher online as hidden states."""
    from anydistill.lm.common import causal_logits
    from anydistill.models.causal_lm import gpt2_lm, llama_lm

    build = {"gpt2": gpt2_lm, "llama": llama_lm}[family]
    torch.manual_seed(0)
    student = build(vocab_size=50, n_layer=1, n_embd=16, n_head=2, n_positions=16).double()
    teacher = build(vocab_size=50, n_layer=2, n_embd=24, n_head=2, n_positions=16).double().eval()
    ids = torch.randint(0, 50, (3, 12))
    mask = _mask(shape=(3, 11))
    options = dict(divergence="jsd", beta=0.3, temperature=1.5, scale_by_t2=True)

    kd_sum, n = token_distill_loss(causal_logits(student, ids), causal_logits(teacher, ids).detach(), mask, **options)
    expected = torch.autograd.grad(kd_sum, list(student.parameters()))

    with torch.inference_mode():
        teacher_hidden = teacher.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    hidden = student.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    head, teacher_head = student.get_output_embeddings(), teacher.get_output_embeddings()
    fused_sum, fused_n = fused_token_distill_loss(
        hidden, head.weight, head.bias, teacher_hidden, teacher_head.weight, teacher_head.bias, mask, chunk_tokens=7, **options
    )
    got = torch.autograd.grad(fused_sum, list(student.parameters()))
    assert fused_n == n
    torch.testing.assert_close(fused_sum, kd_sum, **TIGHT)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-9)
