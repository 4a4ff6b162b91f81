"""Local Hugging Face classifier folders as teachers and students: logits [B, C] from token ids or
images, taps under ``hf.``, layer selection, one-line errors, and an export that the ecosystem's
own loader reads back with the same outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from anydistill.classifier.evaluate import ClassifierEvaluator
from anydistill.core.taps import capture_features
from anydistill.models.hf_classifiers import hf_image_classifier, hf_sequence_classifier
from user_files import write_bert_folder

IDS = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 9, 6, 11, 8, 3]])


class _Data:
    def split(self, name):
        return IDS, torch.tensor([0, 2])


def test_sequence_classifier_gives_logits_and_taps_under_hf(tmp_path) -> None:
    model = hf_sequence_classifier((6,), 3, path=str(write_bert_folder(tmp_path / "bert")))
    model.eval()
    with capture_features(model, ["hf.bert.encoder.layer.1"]) as features:
        logits = model(IDS.float())  # the loader's dry run feeds float zeros: ids are cast
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert features["hf.bert.encoder.layer.1"].shape == (2, 6, 16)
    # Padding is masked: the padded row's logits do not depend on what the pad positions hold.
    reference = model.hf(input_ids=IDS[:1, :4]).logits
    assert torch.allclose(logits[:1], reference, atol=1e-5)


def test_keep_layers_initialises_a_shallower_student(tmp_path) -> None:
    folder = write_bert_folder(tmp_path / "bert", layers=3)
    teacher = hf_sequence_classifier((6,), 3, path=str(folder))
    student = hf_sequence_classifier((6,), 3, path=str(folder), keep_layers=[0, 2])
    assert student.hf.config.num_hidden_layers == 2 and len(student.hf.bert.encoder.layer) == 2
    assert torch.equal(student.hf.bert.encoder.layer[1].output.dense.weight, teacher.hf.bert.encoder.layer[2].output.dense.weight)


def test_export_reloads_with_the_ecosystems_loader_and_with_ours(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = write_bert_folder(tmp_path / "bert")
    student = hf_sequence_classifier((6,), 3, path=str(folder), keep_layers=[1])
    with torch.no_grad():
        student.hf.classifier.weight.add_(0.5)  # "trained": differs from the folder it came from
    ClassifierEvaluator(_Data()).export(student, {"name": "hf-sequence-classifier"}, tmp_path / "export", "kd")
    student.eval()
    expected = student(IDS)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export", local_files_only=True).eval()
    assert torch.allclose(reloaded(input_ids=IDS, attention_mask=(IDS != 0).long()).logits, expected, atol=1e-6)
    assert AutoTokenizer.from_pretrained(tmp_path / "export", local_files_only=True).pad_token_id == 0
    assert (tmp_path / "export" / "model.json").is_file()
    again = hf_sequence_classifier((6,), 3, path=str(folder), keep_layers=[0])  # a teacher.checkpoint / resume
    again.load_state_dict(load_file(str(tmp_path / "export" / "model.safetensors")))
    assert torch.allclose(again.eval()(IDS), expected, atol=1e-6)


def test_folder_errors_are_one_line_and_name_the_fix(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = write_bert_folder(tmp_path / "bert")
    with pytest.raises(ValueError, match="has no config.json; point path at a save_pretrained folder"):
        hf_sequence_classifier((6,), 3, path=str(tmp_path))
    with pytest.raises(ValueError, match="num_labels=3 .* the data has 4 classes"):
        hf_sequence_classifier((6,), 4, path=str(folder))
    with pytest.raises(ValueError, match=r"keep_layers repeats a layer .* outside the valid range 0..1"):
        hf_sequence_classifier((6,), 3, path=str(folder), keep_layers=[1, 1, 7])
    with pytest.raises(ValueError, match="takes at most 32; set data.max_length"):
        hf_sequence_classifier((40,), 3, path=str(folder))
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "gpt")
    with pytest.raises(ValueError, match="holds a GPT2LMHeadModel, not a model for hf-sequence-classifier; use hf-causal-lm"):
        hf_sequence_classifier((6,), 3, path=str(tmp_path / "gpt"))
    with pytest.raises(ValueError, match="holds a BertForSequenceClassification.*use hf-sequence-classifier"):
        hf_image_classifier((3, 8, 8), 3, path=str(folder))


def test_image_classifier_from_a_vit_folder(tmp_path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=2)
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    model = hf_image_classifier((3, 8, 8), 2, path=str(tmp_path / "vit"))
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 2)
    with pytest.raises(ValueError, match="takes 8x8 images .* set data.size: 8"):
        hf_image_classifier((3, 6, 6), 2, path=str(tmp_path / "vit"))
