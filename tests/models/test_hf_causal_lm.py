"""`hf-causal-lm`: a user's `save_pretrained` folder as teacher or student, with layer dropping."""

from __future__ import annotations

import pytest
import torch

from anydistill.core.recipe import validate_kwargs
from anydistill.models.hf_causal_lm import hf_causal_lm
from lm.local_folder import save_tiny_llama

INJECTED = frozenset({"input_shape", "num_classes"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "teacher")


def problems(**kwargs) -> list[str]:
    return validate_kwargs(hf_causal_lm, kwargs, owner="model 'hf-causal-lm'", where="student", injected=INJECTED)[1]


def test_loads_the_folder_and_is_ready_to_train(folder) -> None:
    model = hf_causal_lm(path=str(folder))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 4
    assert model.training and next(model.parameters()).dtype == torch.float32
    half = hf_causal_lm(path=str(folder), dtype="bfloat16", attn_implementation="eager")
    assert next(half.parameters()).dtype == torch.bfloat16 and half.config._attn_implementation == "eager"


def test_keep_layers_copies_those_layers_and_renumbers_the_cache_indices(folder) -> None:
    teacher, student = hf_causal_lm(path=str(folder)), hf_causal_lm(path=str(folder), keep_layers=[0, 2])
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert [m.layer_idx for m in student.modules() if hasattr(m, "layer_idx")] == [0, 1]
    t, s = teacher.state_dict(), student.state_dict()
    for key, value in s.items():
        source = key.replace("layers.1.", "layers.2.")  # student layer 1 is teacher layer 2
        assert torch.equal(value, t[source]), key
    assert not any(k.startswith("model.layers.2.") for k in s)
    # Generation with the KV cache indexes it by layer_idx: cached and uncached decodes agree.
    ids = torch.tensor([[3, 7, 8, 9, 10]])
    student.eval()
    cached = student.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = student.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_layer_dropped_student_round_trips_through_save_pretrained(folder, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    student = hf_causal_lm(path=str(folder), keep_layers=[3, 1]).eval()
    student.save_pretrained(tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export", local_files_only=True).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(student(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)
    assert reloaded.config.num_hidden_layers == 2


def test_gpt2_folder_drops_layers_too(tmp_path) -> None:
    from anydistill.models.causal_lm import gpt2_lm

    gpt2_lm(vocab_size=40, n_layer=3, n_embd=16, n_head=2, n_positions=32).save_pretrained(tmp_path / "gpt2")
    student = hf_causal_lm(path=str(tmp_path / "gpt2"), keep_layers=[0, 2]).eval()
    assert student.config.n_layer == 2 and len(student.transformer.h) == 2
    ids = torch.tensor([[3, 4, 5]])
    cached = student.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(cached, student.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0))


def test_random_init_keeps_the_architecture(folder) -> None:
    pretrained, fresh = hf_causal_lm(path=str(folder)), hf_causal_lm(path=str(folder), init_from="random", keep_layers=[0])
    assert fresh.config.num_hidden_layers == 1
    assert not torch.equal(fresh.lm_head.weight, pretrained.lm_head.weight)


def test_bad_folders_and_layers_are_one_line_each(folder, tmp_path) -> None:
    import json

    (tmp_path / "empty").mkdir()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}))
    [missing] = problems(path=str(tmp_path / "empty"))
    assert "has no config.json" in missing and "save_pretrained" in missing
    [absent] = problems(path=str(tmp_path / "nowhere"))
    assert "does not exist" in absent
    [classifier] = problems(path=str(tmp_path / "bert"))
    assert "BertForSequenceClassification" in classifier and "hf-sequence-classifier" in classifier
    [empty] = problems(path=str(folder), keep_layers=[])
    assert "at least one layer" in empty
    [repeated] = problems(path=str(folder), keep_layers=[0, 2, 0])
    assert "[0] are repeated" in repeated
    [negative] = problems(path=str(folder), keep_layers=[-1])
    assert "keep_layers" in negative and "greater than or equal to 0" in negative
    assert problems(path=str(folder), keep_layers=[0, 2]) == []
    with pytest.raises(ValueError, match=r"in 0\.\.3 \(the model has 4 decoder layers\)\. Got \[0, 4\]"):
        hf_causal_lm(path=str(folder), keep_layers=[0, 4])
