"""`lm-kd` from the teacher's cached last hidden states (``hidden_cache: true``): exact over the whole
vocabulary up to the rounding of the stored states, 2 * H bytes per token, refused when foreign or corrupt."""

from __future__ import annotations

import json

import pytest
import torch

from anydistill.core.errors import CacheError
from anydistill.core.recipe import OptimizerSpec
from anydistill.lm.hidden_cache import HiddenSignals, open_hidden_signals
from anydistill.lm.methods.kd import LMKD
from lm.lm_helpers import fit, tiny_data, tiny_lm, tiny_teacher

SGD = OptimizerSpec(name="sgd", lr=0.5, momentum=0.0, schedule="constant")


@pytest.mark.parametrize("fused_head", [True, False])
def test_hidden_cache_trains_like_the_online_teacher(tmp_path, fused_head: bool) -> None:
    teacher = tiny_teacher()
    online = LMKD(tiny_lm(0), teacher, SGD, divergence="jsd", alpha=0.5)
    fit(online, tiny_data(), steps=3)
    cached = LMKD(tiny_lm(0), teacher, SGD, divergence="jsd", alpha=0.5, hidden_cache=True, fused_head=fused_head,
                  cache_dir=str(tmp_path / "cache"))
    fit(cached, tiny_data(), steps=3)
    assert isinstance(cached.signals, HiddenSignals) and cached.fused == fused_head
    stats = cached.signals.stats
    assert stats["bytes_per_token"] == 2 * 32  # fp16 x hidden size 32, whatever V
    assert 0 <= stats["reconstruction_kl"] <= stats["max_kl"] < 1e-5
    for key, value in online.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[key], value, rtol=1e-3, atol=1e-4)


def open_cache(root, teacher, data=None, **overrides):
    data = data or tiny_data()
    data.setup()
    return open_hidden_signals("test", teacher, data, vocab=96, root=root, **overrides)


def test_a_corrupt_or_foreign_hidden_cache_is_refused_and_left_alone(tmp_path) -> None:
    teacher = tiny_teacher()
    signals = open_cache(tmp_path, teacher)
    assert signals.hidden.dtype == torch.float16 and signals.hidden.shape[1:] == (31, 32)
    (directory,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    head = directory / "head.safetensors"
    original = head.read_bytes()
    head.write_bytes(original[:-2] + b"\x00\x01")
    with pytest.raises(CacheError, match="head.safetensors is missing or corrupt"):
        open_cache(tmp_path, teacher)
    assert head.read_bytes() != original
    head.write_bytes(original)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["tokenizer"]["fingerprint"] = "x" * 64
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="another tokenizer"):
        open_cache(tmp_path, teacher)
    manifest["kind"] = "fixed"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="holds fixed-k signals, not hidden-state ones"):
        open_cache(tmp_path, teacher)
    bf16 = open_cache(tmp_path / "other", teacher, dtype="bfloat16")
    assert bf16.hidden.dtype == torch.bfloat16 and bf16.stats["max_kl"] > signals.stats["max_kl"]  # 7-bit mantissa


def test_topk_and_hidden_cache_together_are_refused() -> None:
    from anydistill.catalog import load_recipe

    model = {"name": "gpt2-lm", "vocab_size": 96, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32}
    recipe = {"name": "both", "data": {"name": "shakespeare", "block_size": 32, "prompt_tokens": 8, "train_limit": 16},
              "teacher": model, "student": model, "methods": {"lm-kd": {"topk": 8, "hidden_cache": True}}}
    with pytest.raises(Exception, match="not both"):
        load_recipe(recipe)
