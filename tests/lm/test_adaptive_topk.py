"""Adaptive-k teacher signals (`anydistill.lm.adaptive_topk`) and their cache: the closed-form KL,
the budget met on the actual fp16 reconstruction, ragged storage, padding that changes nothing,
and the cache's refusals."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from anydistill.core.errors import CacheError
from anydistill.lm.adaptive_topk import (RaggedTeacher, adaptive_problems, adaptive_sparsify, kl_per_k,
                                         padded_sparse, ragged_bytes_per_token)
from anydistill.lm.token_losses import token_distill_loss
from anydistill.lm.topk import densify, densify_rows, reconstruction_kl, sparsify
from anydistill.lm.topk_cache import load_adaptive_cache, load_topk_cache, open_or_build_adaptive_cache
from lm.lm_helpers import tiny_data, tiny_teacher

N, V = 12, 40


def _logits(n=N, vocab=V, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * scale


def _kl(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || exp(log_q)) per row, in float64."""
    log_p = torch.log_softmax(logits.double(), -1)
    return (log_p.exp() * (log_p - log_q.double())).sum(-1)


def _reconstruction(sparse, vocab=V) -> torch.Tensor:
    return densify_rows(sparse.logprobs, sparse.indices, sparse.tail_logprob, vocab)


def test_closed_form_kl_for_every_k_equals_the_brute_force_reconstruction() -> None:
    z = _logits()
    sorted_log_p = torch.log_softmax(z.double(), -1).sort(-1, descending=True).values
    closed = kl_per_k(sorted_log_p)
    brute = torch.stack([reconstruction_kl(z, sparsify(z, k)) for k in range(1, V + 1)], 1).double()
    assert closed.shape == (N, V) and closed[:, -1].abs().max() == 0
    torch.testing.assert_close(closed, brute, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4])
def test_every_position_meets_the_budget_on_the_fp16_reconstruction_with_the_fewest_entries(eps) -> None:
    z = torch.cat([_logits(seed=1), _logits(seed=2, scale=8.0)])  # spread and peaked rows
    ragged, kl = adaptive_sparsify(z, eps, 1, V)
    rows = torch.arange(z.shape[0])
    measured = _kl(z, _reconstruction(ragged.padded(rows, V)))
    assert measured.max() <= eps  # the max, not the mean
    torch.testing.assert_close(measured, kl, rtol=0, atol=1e-12)
    # One entry fewer breaks the budget, in closed form or once stored in fp16.
    k = ragged.counts
    closed = kl_per_k(torch.log_softmax(z.double(), -1).sort(-1, descending=True).values)
    for row in (k > 1).nonzero().squeeze(1).tolist():
        fewer = sparsify(z[row : row + 1], int(k[row]) - 1, dtype=torch.float16)
        assert closed[row, k[row] - 2] > eps or _kl(z[row : row + 1], _reconstruction(fewer)).item() > eps
    assert len(set(k.tolist())) > 1  # the point: k varies per position


def test_fp16_rounding_raises_k_where_the_closed_form_choice_breaks_the_budget() -> None:
    z = _logits(400, seed=0)
    closed = kl_per_k(torch.log_softmax(z.double(), -1).sort(-1, descending=True).values)
    first = (closed <= 1e-4).long().argmax(-1) + 1  # the closed form's choice
    ragged, kl = adaptive_sparsify(z, 1e-4, 1, V)
    raised = ragged.counts > first
    assert raised.any() and (ragged.counts >= first).all() and kl.max() <= 1e-4
    stored = ragged.padded(raised.nonzero().squeeze(1), V)
    assert _kl(z[raised], _reconstruction(stored)).max() <= 1e-4
    # Below the fp16 rounding even k = V cannot meet a budget: reported, not hidden.
    tiny, kl_tiny = adaptive_sparsify(z, 1e-9, 1, V)
    assert (kl_tiny > 1e-9).any() and (tiny.counts[kl_tiny > 1e-9] == V).all()


def test_k_stays_within_its_range_and_violations_are_reported() -> None:
    z = _logits(scale=1.0)  # flat rows: 1e-4 needs nearly all of V
    ragged, kl = adaptive_sparsify(z, 1e-4, 3, 8)
    assert ragged.counts.min() >= 3 and ragged.counts.max() == 8
    assert (kl > 1e-4).any()  # k_max < V cannot always meet it: reported, not hidden
    peaked = _logits(scale=30.0)
    assert adaptive_sparsify(peaked, 1e-2, 5, V)[0].counts.min() == 5  # k_min holds even when 1 would do


def test_ids_are_int16_up_to_a_32768_vocabulary_and_int32_above() -> None:
    for vocab, dtype in ((32768, torch.int16), (32769, torch.int32)):
        z = torch.zeros(2, vocab)
        z[:, vocab - 1] = 20.0  # the largest id is the top entry
        ragged, _ = adaptive_sparsify(z, 1e-3, 1, 4)
        assert ragged.indices.dtype == dtype and int(ragged.indices[0]) == vocab - 1
        sparse = ragged.padded(torch.arange(2), vocab)
        assert sparse.indices.dtype == torch.int32 and int(sparse.indices[0, 0]) == vocab - 1


def test_ragged_round_trip_equals_fixed_k_rows() -> None:
    z = _logits()
    for k in (1, 7, V):
        ragged, _ = adaptive_sparsify(z, 1e-9, k, k)  # k_min = k_max: a fixed k
        assert ragged.offsets.tolist() == list(range(0, N * k + 1, k))
        fixed = sparsify(z, k, dtype=torch.float16)
        sparse = ragged.padded(torch.arange(N), V)
        if k < V:
            assert torch.equal(sparse.logprobs, fixed.logprobs) and torch.equal(sparse.indices.long(), fixed.indices)
            assert torch.equal(ragged.tail_logprob, fixed.tail_logprob)
        torch.testing.assert_close(_reconstruction(sparse), densify(fixed, V), rtol=0, atol=1e-6)


def _ragged_by_hand(counts: list[int], seed: int = 3) -> tuple[RaggedTeacher, torch.Tensor]:
    """Rows of ``counts`` top entries of random logits, stored as the cache stores them."""
    z = _logits(len(counts), seed=seed)
    z[0, 0] = 10.0  # id 0 is a real top entry of row 0: padding must not overwrite it
    rows = [sparsify(z[i : i + 1], k, dtype=torch.float16) for i, k in enumerate(counts)]
    ragged = RaggedTeacher(
        logprobs=torch.cat([r.logprobs[0] for r in rows]), indices=torch.cat([r.indices[0] for r in rows]).short(),
        tail_logprob=torch.cat([r.tail_logprob for r in rows]),
        offsets=torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()]))
    return ragged, torch.cat([densify(r, V) for r in rows])


@pytest.mark.parametrize("counts", [[1, 5, 2, 9], [3, V, 1, 17]])  # the second pads to W = V (dense rows)
def test_padding_changes_no_reconstruction_and_no_loss(counts) -> None:
    ragged, per_row = _ragged_by_hand(counts)
    sparse = ragged.padded(torch.arange(len(counts)), V)
    assert sparse.k == max(counts)
    torch.testing.assert_close(_reconstruction(sparse), per_row, rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(7)
    student = torch.randn(len(counts), V, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(len(counts), dtype=torch.bool)
    for divergence, temperature in (("fkl", 1.0), ("rkl", 2.0), ("jsd", 0.7), ("tvd", 1.0)):
        padded_loss, _ = token_distill_loss(student, sparse, mask, divergence=divergence, temperature=temperature, chunk_tokens=3)
        dense_loss, _ = token_distill_loss(student, per_row, mask, divergence=divergence, temperature=temperature)
        torch.testing.assert_close(padded_loss, dense_loss, rtol=1e-6, atol=1e-7)
    rows = torch.tensor([2, 0])  # any subset, in any order
    torch.testing.assert_close(_reconstruction(ragged.padded(rows, V)), per_row[rows], rtol=0, atol=1e-6)


def test_padded_sparse_spreads_each_row_tail_over_its_own_v_minus_count_tokens() -> None:
    # Rows with counts 1 and 3, padded to width 3 by repeating their last entry.
    values = torch.tensor([[-0.1, -0.1, -0.1], [-0.1, -3.0, -4.0]]).half()
    ids = torch.tensor([[4, 4, 4], [4, 9, 2]])
    tail = torch.tensor([-2.0, -0.5]).half()
    counts = torch.tensor([1, 3])
    expected = (tail.float() - (V - counts).float().log())[:, None].repeat(1, V)
    for row, k in enumerate(counts.tolist()):
        expected[row, ids[row, :k]] = values[row, :k].float()
    log_q = _reconstruction(padded_sparse(values, ids, tail, counts, V))
    torch.testing.assert_close(log_q, torch.log_softmax(expected, -1), rtol=0, atol=1e-6)


def test_bytes_per_token_counts_entries_tail_and_offsets() -> None:
    ragged, _ = _ragged_by_hand([1, 5, 2, 8])
    assert ragged_bytes_per_token(ragged) == (16 / 4) * (2 + 2) + 2 + 8


def test_adaptive_problems_name_each_bad_setting() -> None:
    assert adaptive_problems(1e-3, 1, 64, 96) == []
    assert adaptive_problems(1e-3, 96, 96, 96) == []
    problems = adaptive_problems(0.0, 0, 4, 96)
    assert len(problems) == 2 and "'kl_budget'" in problems[0] and "'k_min'" in problems[1]
    assert "<= k_max=4" in adaptive_problems(1e-3, 8, 4, 96)[0]
    assert "<= the vocabulary V=96" in adaptive_problems(1e-3, 1, 97, 96)[0]
    assert "'kl_budget'" in adaptive_problems(float("nan"), 1, 4, 96)[0]
    with pytest.raises(ValueError, match="'k_min'"):
        adaptive_sparsify(_logits(), 1e-3, 0, 4)


# ----------------------------------------------------------------------------------------------
# the cache


def build(tmp_path, teacher=None, **settings):
    data = tiny_data()
    teacher = teacher or tiny_teacher()
    settings = {"kl_budget": 1e-3, "k_min": 1, "k_max": 96, **settings}
    return open_or_build_adaptive_cache(tmp_path, teacher, data.split("train")[0], dataset_fingerprint=data.fingerprint(),
                                        tokenizer_fingerprint="tok", vocab=96, **settings), teacher, data


def _load_kwargs(teacher, data, **changes):
    kwargs = dict(teacher_fingerprint=teacher.fingerprint(), dataset_fingerprint=data.fingerprint(), tokenizer_fingerprint="tok",
                  kl_budget=1e-3, k_min=1, k_max=96, vocab=96)
    return {**kwargs, **changes}


def test_cache_meets_the_budget_at_every_position_and_records_its_stats(tmp_path) -> None:
    from anydistill.lm.common import teacher_logits

    (signals, directory, built), teacher, data = build(tmp_path)
    assert built and directory.name.endswith("-adaptive0.001-k1-96-v96")
    ids, _ = data.split("train")
    stats = signals.stats
    assert stats["positions"] == ids.shape[0] * 31 == sum(stats["k_histogram"].values())
    assert stats["violations"] == 0 and stats["max_kl"] <= 1e-3 and 0 < stats["reconstruction_kl"] <= stats["max_kl"]
    mean_k = sum(int(k) * c for k, c in stats["k_histogram"].items()) / stats["positions"]
    assert stats["mean_k"] == pytest.approx(mean_k) and stats["bytes_per_token"] == pytest.approx(mean_k * (2 + 2) + 2 + 8)
    assert signals.ragged.indices.dtype == torch.int16
    index = torch.tensor([5, 0, 17])
    sparse = signals.rows(index)
    assert sparse.num_tokens == 3 * 31
    logits = teacher_logits(teacher, ids[index], torch.ones_like(ids[index]), 96).reshape(-1, 96)
    assert _kl(logits, _reconstruction(sparse, 96)).max() <= 1e-3 + 1e-9  # batching moves the logits by ~1e-7
    (again, directory2, built2), _, _ = build(tmp_path, teacher=teacher)
    assert not built2 and directory2 == directory and torch.equal(again.ragged.offsets, signals.ragged.offsets)
    assert torch.equal(again.rows(index).logprobs, sparse.logprobs)


def test_several_shards_load_as_one_cache(tmp_path) -> None:
    from anydistill.lm.topk_cache import build_adaptive_cache

    teacher, data = tiny_teacher(), tiny_data()
    ids = data.split("train")[0]
    kwargs = dict(dataset_fingerprint=data.fingerprint(), tokenizer_fingerprint="tok", kl_budget=1e-3, k_min=1, k_max=96, vocab=96)
    build_adaptive_cache(tmp_path / "one", teacher, ids, **kwargs)
    build_adaptive_cache(tmp_path / "many", teacher, ids, shard_rows=5, batch_size=3, **kwargs)
    load = {key: value for key, value in kwargs.items() if key != "dataset_fingerprint"}
    one = load_adaptive_cache(tmp_path / "one", teacher_fingerprint=teacher.fingerprint(), dataset_fingerprint=data.fingerprint(), **load)
    many = load_adaptive_cache(tmp_path / "many", teacher_fingerprint=teacher.fingerprint(), dataset_fingerprint=data.fingerprint(), **load)
    assert len(json.loads((tmp_path / "many" / "manifest.json").read_text())["shards"]) == 7
    assert torch.equal(one.ragged.offsets, many.ragged.offsets)
    index = torch.tensor([31, 4, 5])
    torch.testing.assert_close(_reconstruction(one.rows(index), 96), _reconstruction(many.rows(index), 96), rtol=0, atol=1e-6)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_k_max_below_v_that_misses_the_budget_is_counted_and_warned(tmp_path) -> None:
    handler, logger = _Lines(), logging.getLogger("anydistill.lm.topk_cache")  # pytest runs with -p no:logging
    logger.addHandler(handler)
    try:
        (signals, _, _), _, _ = build(tmp_path, kl_budget=1e-4, k_max=4)
    finally:
        logger.removeHandler(handler)
    assert signals.stats["violations"] > 0 and signals.stats["max_kl"] > 1e-4
    assert len(handler.lines) == 1 and "raise k_max" in handler.lines[0]


def test_a_corrupt_shard_is_refused(tmp_path) -> None:
    (_, directory, _), teacher, _ = build(tmp_path)
    shard = directory / "shard-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="checksum mismatch.*delete"):
        build(tmp_path, teacher=teacher)


@pytest.mark.parametrize("field, value", [("tokenizer_fingerprint", "another"), ("teacher_fingerprint", "x" * 64),
                                          ("kl_budget", 1e-2), ("k_min", 2), ("k_max", 64), ("attention_fingerprint", "y" * 64)])
def test_a_cache_built_for_something_else_is_refused(tmp_path, field, value) -> None:
    (_, directory, _), teacher, data = build(tmp_path)
    with pytest.raises(CacheError, match="built for another|attending to padding"):
        load_adaptive_cache(directory, **_load_kwargs(teacher, data, **{field: value}))


def test_kinds_and_formats_are_never_mistaken(tmp_path) -> None:
    (_, directory, _), teacher, data = build(tmp_path)
    fixed = dict(teacher_fingerprint=teacher.fingerprint(), dataset_fingerprint=data.fingerprint(), tokenizer_fingerprint="tok",
                 k=16, tail=True, vocab=96)
    with pytest.raises(CacheError, match="holds adaptive-k signals, not fixed-k ones"):
        load_topk_cache(directory, **fixed)
    manifest = json.loads((directory / "manifest.json").read_text())
    # A build that predates the format reads no "format" or "kind": the "k" field refuses it.
    assert manifest["k"] == "adaptive" and manifest["k"] != fixed["k"]
    manifest["format"] = 3
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="format 3, newer .*upgrade anydistill"):
        load_adaptive_cache(directory, **_load_kwargs(teacher, data))
    manifest["format"], manifest["kind"] = 2, "fixed"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="holds fixed-k signals, not adaptive-k ones"):
        load_adaptive_cache(directory, **_load_kwargs(teacher, data))


def test_inconsistent_offsets_are_refused(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from anydistill.core.cache import file_sha256

    (_, directory, _), teacher, data = build(tmp_path)
    shard = directory / "shard-00000.safetensors"
    tensors = load_file(str(shard))
    tensors["offsets"][-1] += 1
    save_file(tensors, str(shard))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = file_sha256(shard)  # a consistent checksum over bad contents
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="inconsistent offsets"):
        load_adaptive_cache(directory, **_load_kwargs(teacher, data))


def test_bad_settings_are_refused_before_any_teacher_pass(tmp_path) -> None:
    with pytest.raises(ValueError, match="'k_max' .* <= the vocabulary V=96"):
        build(tmp_path, k_max=97)
    assert not any(tmp_path.iterdir())
