"""Users' own files through `anydistill run`: tables, image folders, tensor files and a local BERT
classifier with its tokenizer run end to end; every bad input is refused in one `error:` line with
exit status 2 and no run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from user_files import (
    image_arrays,
    write_bert_folder,
    write_image_folder,
    write_table,
    write_texts,
)

from anydistill.cli import main

RUN = """\
name: user-files
seed: 0
data: {DATA}
teacher: {TEACHER}
student: {STUDENT}
trainer: {max_epochs: 1, limit_train_batches: 2, progress_bar: false}
methods:
  {METHODS}
"""
MLPS = {"TEACHER": "{name: mlp, hidden: [16]}", "STUDENT": "{name: mlp, hidden: [8]}", "METHODS": "teacher: {}\n  scratch: {}\n  kd: {}"}


def recipe(tmp_path: Path, data: str, **parts: str) -> str:
    text = RUN
    for key, value in {"DATA": data, **MLPS, **parts}.items():
        text = text.replace("{" + key + "}", value)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def run(tmp_path: Path, recipe_path: str) -> dict:
    code = main(["run", recipe_path, "--runs", str(tmp_path / "runs"), "--name", "r"])
    assert code == 0
    return json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())


def sources(tmp_path: Path) -> dict[str, str]:
    x, y = image_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    write_table(tmp_path / "t.csv")
    write_image_folder(tmp_path / "imgs", per_class=8)
    return {
        "csv": f"{{name: csv, train: {tmp_path / 't.csv'}, label: species, batch_size: 16}}",
        "image-folder": f"{{name: image-folder, train: {tmp_path / 'imgs'}, size: 8, mode: grayscale, batch_size: 4}}",
        "tensors-npz": f"{{name: tensors, train: {tmp_path / 'd.npz'}, batch_size: 16}}",
        "tensors-safetensors": f"{{name: tensors, train: {tmp_path / 'd.safetensors'}, batch_size: 16}}",
    }


@pytest.mark.parametrize("source", ["csv", "image-folder", "tensors-npz", "tensors-safetensors"])
def test_users_files_run_end_to_end(tmp_path, source) -> None:
    metrics = run(tmp_path, recipe(tmp_path, sources(tmp_path)[source]))
    assert set(metrics) == {"teacher", "scratch", "kd"}
    for row in metrics.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and {"ece", "params", "val_accuracy"} <= set(row)
    config = (tmp_path / "runs" / "r" / "config.yaml").read_text()
    assert "val_fraction: 0.1" in config and "test_fraction: 0.2" in config and "split_seed: 0" in config


def test_local_bert_teacher_and_student_on_text_then_reload_with_transformers(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    from anydistill.models.hf_classifiers import hf_sequence_classifier

    folder = write_bert_folder(tmp_path / "bert")
    write_texts(tmp_path / "reviews.csv")
    data = f"{{name: text-classification, path: {tmp_path / 'reviews.csv'}, tokenizer: {folder}, text: review, label: sentiment, max_length: 8, batch_size: 8}}"
    path = recipe(tmp_path, data, TEACHER=f"{{name: hf-sequence-classifier, path: {folder}}}",
                  STUDENT=f"{{name: hf-sequence-classifier, path: {folder}, keep_layers: [0]}}",
                  METHODS="scratch: {}\n  kd: {temperature: 2.0}")
    metrics = run(tmp_path, path)
    assert set(metrics) == {"teacher", "scratch", "kd"} and metrics["kd"]["params"] < metrics["teacher"]["params"]
    export = tmp_path / "runs" / "r" / "checkpoints" / "kd"
    ours = hf_sequence_classifier((8,), 3, path=str(folder), keep_layers=[0])
    from safetensors.torch import load_file

    ours.load_state_dict(load_file(str(export / "model.safetensors")))
    ids = torch.tensor([[2, 5, 7, 3, 0, 0, 0, 0], [2, 9, 6, 11, 8, 3, 0, 0]])
    reloaded = AutoModelForSequenceClassification.from_pretrained(export, local_files_only=True).eval()
    assert reloaded.config.num_hidden_layers == 1
    assert reloaded.config.id2label == {0: "neg", 1: "neu", 2: "pos"}  # the data's string labels, in index order
    assert torch.allclose(reloaded(input_ids=ids, attention_mask=(ids != 0).long()).logits, ours.eval()(ids), atol=1e-6)


def test_dataset_distillation_takes_a_tensor_file(tmp_path) -> None:
    x, y = image_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    text = f"""\
name: dd-tensors
data: {{name: tensors, train: {tmp_path / 'd.npz'}}}
student: {{name: synthetic-set, ipc: 1}}
trainer: {{max_epochs: 1, progress_bar: false}}
evaluation: {{epochs: 2, num_models: 1, net_width: 8, net_depth: 1, baselines: [random], random_subsets: 1}}
methods:
  dm: {{iterations_per_epoch: 2, net_width: 8, net_depth: 1, batch_real: 16}}
"""
    (tmp_path / "dd.yaml").write_text(text)
    metrics = run(tmp_path, str(tmp_path / "dd.yaml"))
    assert {"dm", "random"} <= set(metrics) and 0.0 <= metrics["dm"]["accuracy"] <= 1.0


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, dict[str, str], str]]:
    write_table(tmp_path / "t.csv")
    write_table(tmp_path / "reals.csv", label="y", classes=(0.5, 1.5))
    (tmp_path / "empty").mkdir()
    write_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "bird").mkdir()
    write_bert_folder(tmp_path / "bert")
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "gpt")
    csv = f"{{name: csv, train: {tmp_path / 't.csv'}, label: species}}"
    bert = f"{{name: hf-sequence-classifier, path: {tmp_path / 'bert'}}}"
    return {
        "missing column": (f"{{name: csv, train: {tmp_path / 't.csv'}, label: kind}}", {}, "no column 'kind'; its columns are: f0, f1, f2, species"),
        "fractional labels": (f"{{name: csv, train: {tmp_path / 'reals.csv'}, label: y}}", {}, "non-integer numbers"),
        "fraction outside (0,1)": (f"{{name: csv, train: {tmp_path / 't.csv'}, label: species, test_fraction: 1.0}}", {}, "'test_fraction'"),
        "missing file": (f"{{name: csv, train: {tmp_path / 'nowhere.csv'}}}", {}, "no such file"),
        "empty folder": (f"{{name: image-folder, train: {tmp_path / 'empty'}}}", {}, "has no class subfolders"),
        "class folder without images": (f"{{name: image-folder, train: {tmp_path / 'imgs'}}}", {}, "class folder 'bird'"),
        "no config.json": (csv, {"TEACHER": f"{{name: hf-sequence-classifier, path: {tmp_path / 'empty'}}}"},
                           "has no config.json; point path at a save_pretrained folder"),
        "num_labels mismatch": (f"{{name: tensors, train: {tmp_path / 'd.npz'}}}", {"TEACHER": bert}, "num_labels=3"),
        "causal LM folder": (csv, {"TEACHER": f"{{name: hf-sequence-classifier, path: {tmp_path / 'gpt'}}}"},
                             "holds a GPT2LMHeadModel, not a model for hf-sequence-classifier; use hf-causal-lm"),
    }


BAD = ["missing column", "fractional labels", "fraction outside (0,1)", "missing file", "empty folder",
       "class folder without images", "no config.json", "num_labels mismatch", "causal LM folder"]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_are_refused_in_one_line_and_write_nothing(tmp_path, capsys, case) -> None:
    x, y = image_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)  # 4 classes
    data, parts, expected = _bad_inputs(tmp_path)[case]
    capsys.readouterr()  # what writing the fixtures printed (transformers' progress bars)
    code = main(["run", recipe(tmp_path, data, **parts), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists()
