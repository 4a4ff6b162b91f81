"""`seq-kd` with ``decoding: beam``: the teacher decodes every training prompt once with beam search
before training, into a checksummed store that the next run loads; training reads it by row."""

from __future__ import annotations

import json

import pytest
import torch

from anydistill.core.errors import CacheError
from anydistill.core.recipe import OptimizerSpec
from anydistill.lm.generation_cache import open_or_build_generations
from anydistill.lm.methods.seq_kd import SeqKD
from lm.lm_helpers import fit, state, tiny_data, tiny_lm, tiny_teacher
from lm.test_lm_methods import ForwardCounter

SGD = OptimizerSpec(name="sgd", lr=0.5, momentum=0.0, schedule="constant")


def test_beam_generations_are_made_once_and_reused(tmp_path) -> None:
    teacher = tiny_teacher()
    counter = ForwardCounter(teacher.model)
    method = SeqKD(tiny_lm(0), teacher, SGD, decoding="beam", num_beams=3, cache_dir=str(tmp_path))
    before = state(method.student)
    fit(method, tiny_data(), steps=2, callbacks=[counter])
    assert counter.calls == 0  # no teacher pass while training: the store holds the outputs
    assert any(not torch.equal(v, before[k]) for k, v in method.student.state_dict().items())
    ids, mask = method.stored
    data = tiny_data()
    data.setup()
    train_ids = data.split("train")[0]
    assert ids.shape == train_ids.shape and torch.equal(ids[:, :8], train_ids[:, :8])  # prompts kept
    assert not mask[:, :8].any() and mask[:, 8].all()

    # The row equals transformers' own beam search on that prompt.
    out = teacher.model.generate(input_ids=train_ids[:1, :8], attention_mask=torch.ones(1, 8, dtype=torch.long), num_beams=3,
                                 do_sample=False, max_new_tokens=24, min_new_tokens=0, eos_token_id=data.tokenizer.eos_token_id,
                                 pad_token_id=data.tokenizer.pad_token_id)
    assert torch.equal(ids[0, : out.shape[1]], out[0])

    again = SeqKD(tiny_lm(0), teacher, SGD, decoding="beam", num_beams=3, cache_dir=str(tmp_path))
    fit(again, tiny_data(), steps=1)
    assert torch.equal(again.stored[0], ids)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1


def build(tmp_path, teacher, prompts, **overrides):
    options = dict(dataset_fingerprint="d" * 64, tokenizer_fingerprint="t" * 64, num_beams=2, eos_token_id=0, pad_token_id=0)
    options.update(overrides)
    return open_or_build_generations(tmp_path, teacher, prompts, 4, **options)


def test_a_corrupt_or_foreign_store_is_refused_and_left_alone(tmp_path) -> None:
    teacher, prompts = tiny_teacher(), torch.randint(1, 96, (3, 5), generator=torch.Generator().manual_seed(0))
    _, _, directory, built = build(tmp_path, teacher, prompts)
    assert built and build(tmp_path, teacher, prompts)[3] is False
    file = directory / "generations.safetensors"
    original = file.read_bytes()
    file.write_bytes(original[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(CacheError, match="checksum"):
        build(tmp_path, teacher, prompts)
    assert file.read_bytes() != original  # refused, not overwritten
    file.write_bytes(original)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["tokenizer"] = "x" * 64
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="another tokenizer"):
        build(tmp_path, teacher, prompts)
    manifest["format"] = 99
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="format 99"):
        build(tmp_path, teacher, prompts)
