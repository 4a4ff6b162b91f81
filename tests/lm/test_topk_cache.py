"""The top-k signal cache of lm-kd: built once, verified on load, refused when stale or corrupt."""

from __future__ import annotations

import json

import pytest
import torch

from anydistill.core.errors import CacheError
from anydistill.lm.topk_cache import load_topk_cache, open_or_build_topk_cache
from lm.lm_helpers import tiny_data, tiny_teacher


def build(tmp_path, k=8, tail=True, teacher=None):
    data = tiny_data()
    teacher = teacher or tiny_teacher()
    return open_or_build_topk_cache(tmp_path, teacher, data.split("train")[0], dataset_fingerprint=data.fingerprint(),
                                    tokenizer_fingerprint="tok", k=k, tail=tail, vocab=96), teacher, data


def test_built_once_then_loaded_with_its_stats(tmp_path) -> None:
    (signals, directory, built), teacher, data = build(tmp_path)
    assert built
    assert signals.logprobs.shape == (32, 31, 8) and signals.indices.dtype == torch.int32 and signals.tail.shape == (32, 31)
    assert signals.stats["bytes_per_token"] == 8 * (2 + 4) + 2
    assert 0 < signals.stats["reconstruction_kl"] < 1
    (again, directory2, built2), _, _ = build(tmp_path, teacher=teacher)
    assert not built2 and directory2 == directory and torch.equal(again.logprobs, signals.logprobs)
    rows = signals.rows(torch.tensor([3, 0]))
    assert rows.num_tokens == 2 * 31 and rows.k == 8


def test_a_corrupt_shard_is_refused_and_left_alone(tmp_path) -> None:
    (_, directory, _), teacher, data = build(tmp_path)
    shard = directory / "shard-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="checksum mismatch.*delete"):
        build(tmp_path, teacher=teacher)
    assert shard.read_bytes() == bytes(raw)  # never rebuilt over the user's files silently


@pytest.mark.parametrize("field, value", [("tokenizer", "another"), ("k", 4), ("tail", False), ("teacher", "x" * 64)])
def test_a_cache_built_for_something_else_is_refused(tmp_path, field, value) -> None:
    (_, directory, _), teacher, data = build(tmp_path)
    expected = dict(teacher_fingerprint=teacher.fingerprint(), dataset_fingerprint=data.fingerprint(),
                    tokenizer_fingerprint="tok", k=8, tail=True, vocab=96)
    key = {"tokenizer": "tokenizer_fingerprint", "teacher": "teacher_fingerprint"}.get(field, field)
    expected[key] = value
    with pytest.raises(CacheError, match="built for another"):
        load_topk_cache(directory, **expected)


def test_a_missing_or_corrupt_manifest_is_refused(tmp_path) -> None:
    (_, directory, _), teacher, data = build(tmp_path)
    kwargs = dict(teacher_fingerprint=teacher.fingerprint(), dataset_fingerprint=data.fingerprint(),
                  tokenizer_fingerprint="tok", k=8, tail=True, vocab=96)
    manifest = directory / "manifest.json"
    manifest.write_text(json.dumps({"format": 1}))
    with pytest.raises(CacheError, match="manifest .* is corrupt"):
        load_topk_cache(directory, **kwargs)
    manifest.unlink()
    with pytest.raises(CacheError, match="no manifest.json"):
        load_topk_cache(directory, **kwargs)
