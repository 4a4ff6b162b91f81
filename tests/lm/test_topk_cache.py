"""The top-k signal cache of lm-kd: built once, verified on load, refused when stale or corrupt."""

from __future__ import annotations

import json

import pytest
import torch

from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher
from anydistill.lm.common import teacher_logits
from anydistill.lm.token_losses import token_distill_loss
from anydistill.lm.topk import densify
from anydistill.lm.signal_store import attention_fingerprint, split_attention_mask
from anydistill.lm.topk_cache import load_topk_cache, open_or_build_adaptive_cache, open_or_build_topk_cache
from lm.lm_helpers import tiny_data, tiny_teacher
from lm.local_folder import conversations, save_tiny_llama, write_jsonl


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


def test_a_format_1_cache_is_read_only_where_its_all_ones_mask_is_the_online_one(tmp_path) -> None:
    (_, directory, _), teacher, data = build(tmp_path)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["kind"] == "fixed" and manifest["attention"] == "all-ones"
    for key in ("kind", "attention"):
        del manifest[key]
    manifest["format"] = 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    kwargs = dict(teacher_fingerprint=teacher.fingerprint(), dataset_fingerprint=data.fingerprint(),
                  tokenizer_fingerprint="tok", k=8, tail=True, vocab=96)
    assert load_topk_cache(directory, **kwargs).logprobs.shape == (32, 31, 8)  # unpadded blocks: still exact
    padded = torch.ones(32, 32, dtype=torch.long)
    padded[0, :3] = 0
    with pytest.raises(CacheError, match="attending to padding .*delete"):
        load_topk_cache(directory, attention_fingerprint=attention_fingerprint(padded), **kwargs)


@pytest.fixture(scope="module")
def padded_data(tmp_path_factory):
    """Chat rows with left-padded prompts (prompt_tokens=12) and a tiny Llama teacher."""
    from transformers import AutoModelForCausalLM

    from anydistill.data.lm_dataset import LMDataset

    folder = save_tiny_llama(tmp_path_factory.mktemp("llama") / "teacher")
    data = LMDataset(tokenizer=str(folder), train=str(write_jsonl(folder.parent / "chat.jsonl", conversations(12))),
                     block_size=32, batch_size=4, prompt_tokens=12, val_fraction=0.1, test_fraction=0.1)
    data.setup()
    return data, Teacher(AutoModelForCausalLM.from_pretrained(folder), name="tiny-llama")


def test_the_cached_signal_is_the_online_one_on_padded_batches(tmp_path, padded_data) -> None:
    data, teacher = padded_data
    vocab = len(data.tokenizer)
    ids = data.split("train")[0]
    attention = split_attention_mask(data, "train")
    assert (attention[:, 0] == 0).any()  # some prompts are left-padded: the mask matters at their completions
    common = dict(dataset_fingerprint=data.fingerprint(), tokenizer_fingerprint="tok", vocab=vocab)
    fixed, _, _ = open_or_build_topk_cache(tmp_path, teacher, ids, k=vocab, tail=True, dtype="float32", attention_mask=attention, **common)
    adaptive, _, _ = open_or_build_adaptive_cache(tmp_path, teacher, ids, kl_budget=1e-3, k_min=1, k_max=vocab,
                                                  attention_mask=attention, **common)
    # What the cache computed before: the teacher attending to the padding.
    stale, _, _ = open_or_build_topk_cache(tmp_path / "stale", teacher, ids, k=vocab, tail=True, dtype="float32", **common)
    batches, stale_gap = list(data.train_dataloader()), 0.0
    assert batches
    for batch in batches:
        online = teacher_logits(teacher, batch["input_ids"], batch["attention_mask"], vocab)  # what lm-kd runs online
        mask = batch["completion_mask"][:, 1:]
        online_log_p = torch.log_softmax(online[mask].float(), -1)
        cached = densify(fixed.rows(batch["index"]), vocab)[mask.reshape(-1)]
        torch.testing.assert_close(cached, online_log_p, rtol=0, atol=1e-5)
        stale_gap = max(stale_gap, float((densify(stale.rows(batch["index"]), vocab)[mask.reshape(-1)] - online_log_p).abs().max()))
        log_q = densify(adaptive.rows(batch["index"]), vocab)[mask.reshape(-1)].double()
        kl = (online_log_p.double().exp() * (online_log_p.double() - log_q)).sum(-1)
        assert kl.max() <= 1e-3 + 1e-6
        student = torch.randn(*mask.shape, vocab, generator=torch.Generator().manual_seed(0))
        from_cache, count = token_distill_loss(student, fixed.rows(batch["index"]), mask, divergence="fkl")
        from_teacher, count2 = token_distill_loss(student, online, mask, divergence="fkl")
        assert count == count2 > 0
        torch.testing.assert_close(from_cache, from_teacher, rtol=1e-5, atol=1e-5)
    assert stale_gap > 1e-2  # the test can tell: the all-ones cache differs from the online teacher
    # The stale all-ones cache is refused once the split's mask is given.
    with pytest.raises(CacheError, match="attending to padding"):
        open_or_build_topk_cache(tmp_path / "stale", teacher, ids, k=vocab, tail=True, dtype="float32", attention_mask=attention, **common)


def test_split_attention_mask_is_what_the_loaders_serve(padded_data) -> None:
    data, _ = padded_data
    mask = split_attention_mask(data, "train")
    batch = next(iter(data.train_dataloader()))
    assert torch.equal(mask[batch["index"]], batch["attention_mask"])
    shakespeare = tiny_data()
    blocks = next(iter(shakespeare.train_dataloader()))
    assert torch.equal(split_attention_mask(shakespeare, "train")[blocks["index"]], blocks["attention_mask"])
    assert attention_fingerprint(split_attention_mask(shakespeare, "train")) == "all-ones"
