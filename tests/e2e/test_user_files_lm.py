"""A user's own causal LM and text, through `anydistill run`: the teacher is a `save_pretrained`
folder, the student keeps layers 0 and 2 of it, the data is `.jsonl` conversations or `.txt` files;
the exported student reloads with `AutoModelForCausalLM`. Bad inputs are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anydistill.cli import main
from lm.local_folder import conversations, save_tiny_llama, write_jsonl

RECIPE = """\
# A user's folders and files (test).
name: user-lm
seed: 0
data: {{name: lm-dataset, tokenizer: {teacher}, train: {train}, block_size: 32, batch_size: 4{data_extra}}}
teacher: {{name: hf-causal-lm, path: {teacher}}}
student: {{name: hf-causal-lm, path: {teacher}, keep_layers: {keep}}}
trainer: {{max_epochs: 1, max_steps: 3, progress_bar: false}}
optimizer: {{name: adamw, lr: 0.003}}
evaluation: {{prompt: "hello ,", generate_tokens: 4}}
methods:
  lm-sft: {{}}
  lm-kd: {{alpha: 0.5}}
"""


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("teacher") / "tiny-llama")


def write_recipe(tmp_path: Path, teacher: Path, train: str, keep: str = "[0, 2]", data_extra: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(teacher=teacher, train=train, keep=keep, data_extra=data_extra))
    return path


def run(tmp_path: Path, recipe: Path, capsys) -> tuple[int, str]:
    code = main(["run", str(recipe), "--runs", str(tmp_path / "runs")])
    return code, capsys.readouterr().err


def check_run(tmp_path: Path) -> dict:
    metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert {"teacher", "lm-sft", "lm-kd"} <= set(metrics)
    for label in ("lm-sft", "lm-kd"):
        row = metrics[label]
        assert row["nll"] > 0 and torch.isfinite(torch.tensor(row["nll"])) and "kl_teacher" in row
    assert metrics["lm-kd"]["params"] < metrics["teacher"]["params"]  # two of four layers
    return metrics


def check_export(tmp_path: Path, teacher: Path) -> None:
    """The exported student reloads with the ecosystem's loader and gives the run's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = next((tmp_path / "runs").glob("*/checkpoints/lm-kd"))
    reloaded = AutoModelForCausalLM.from_pretrained(export, local_files_only=True).eval()
    assert reloaded.config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(export, local_files_only=True)
    assert tokenizer.chat_template  # the teacher folder's template travels with the student
    ids = torch.tensor([tokenizer("hello , how are you today ?", add_special_tokens=False)["input_ids"]])
    # The same weights loaded into the builder's architecture give the same logits.
    from safetensors.torch import load_file

    from anydistill.models.hf_causal_lm import hf_causal_lm

    rebuilt = hf_causal_lm(path=str(teacher), keep_layers=[0, 2]).eval()
    rebuilt.load_state_dict(load_file(str(export / "model.safetensors")))
    with torch.no_grad():
        expected, got = rebuilt(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-6)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher, local_files_only=True)
    assert not torch.allclose(teacher_model(input_ids=ids).logits, got)  # it trained and it is smaller
    # Generation with the KV cache works on the renumbered layers and matches the uncached decode.
    cached = reloaded.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = reloaded.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_conversations_jsonl_end_to_end(tmp_path, teacher_folder, capsys) -> None:
    train = write_jsonl(tmp_path / "chat.jsonl", conversations(24))
    code, err = run(tmp_path, write_recipe(tmp_path, teacher_folder, str(train)), capsys)
    assert code == 0, err
    check_run(tmp_path)
    check_export(tmp_path, teacher_folder)
    config = (next((tmp_path / "runs").glob("*/config.yaml"))).read_text()
    assert "val_fraction: 0.1" in config and "split_seed: 0" in config  # the held-out draw is recorded


def test_txt_files_end_to_end(tmp_path, teacher_folder, capsys) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    from lm.local_folder import SENTENCES

    for i in range(6):  # six documents, one per file
        (folder / f"doc{i}.txt").write_text(" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(6)))
    recipe = write_recipe(tmp_path, teacher_folder, str(folder))
    recipe.write_text(recipe.read_text().replace("block_size: 32", "block_size: 16"))
    code, err = run(tmp_path, recipe, capsys)
    assert code == 0, err
    metrics = check_run(tmp_path)
    assert metrics["lm-sft"]["params"] == metrics["lm-kd"]["params"]


def bad_cases(tmp_path: Path, teacher: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (recipe text, fragments the one error line must hold)."""
    good = str(write_jsonl(tmp_path / "good.jsonl", conversations(12)))
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}))
    columns = write_jsonl(tmp_path / "columns.jsonl", [{"question": "hi", "answer": "yo"}] * 8)
    no_reply = write_jsonl(tmp_path / "no-reply.jsonl", conversations(6) + [{"messages": [{"role": "user", "content": "hi"}]}])
    plain = save_tiny_llama(tmp_path / "no-template", chat_template=False)
    recipe = lambda **kw: RECIPE.format(**{"teacher": teacher, "train": good, "keep": "[0, 2]", "data_extra": "", **kw})  # noqa: E731
    return {
        "folder without config.json": (recipe().replace(f"teacher: {{name: hf-causal-lm, path: {teacher}}}",
                                                        f"teacher: {{name: hf-causal-lm, path: {no_config}}}"),
                                       ["teacher.path", "has no config.json", "save_pretrained"]),
        "not a causal LM": (recipe().replace(f"teacher: {{name: hf-causal-lm, path: {teacher}}}",
                                             f"teacher: {{name: hf-causal-lm, path: {classifier}}}"),
                            ["BertForSequenceClassification", "hf-sequence-classifier"]),
        "keep_layers out of range": (recipe(keep="[0, 7]"), ["keep_layers", "0..3", "[0, 7]"]),
        "keep_layers empty": (recipe(keep="[]"), ["keep_layers", "at least one layer"]),
        "keep_layers repeated": (recipe(keep="[1, 1]"), ["keep_layers", "[1] are repeated"]),
        "missing column": (recipe(train=str(columns)), ["columns found: question, answer"]),
        "no assistant turn": (recipe(train=str(no_reply)), ["Row 6", "no assistant turn"]),
        "no chat template": (recipe(teacher=plain), ["has no chat template", "chat_template"]),
        "held-out fraction": (recipe(data_extra=", val_fraction: 1.5"), ["val_fraction", "less than 1", "1.5"]),
        "missing file": (recipe(train=str(tmp_path / "nowhere.jsonl")), ["data.train", "does not exist"]),
    }


CASES = ["folder without config.json", "not a causal LM", "keep_layers out of range", "keep_layers empty", "keep_layers repeated",
         "missing column", "no assistant turn", "no chat template", "held-out fraction", "missing file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line(case: str, tmp_path, teacher_folder, capsys) -> None:
    text, fragments = bad_cases(tmp_path, teacher_folder)[case]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    code, err = run(tmp_path, recipe, capsys)
    assert code == 2, err
    # The loader sets the data up once per method that checks it and repeats a set-up failure for
    # each (catalog._check_method); the problem itself is one line.
    lines = list(dict.fromkeys(err.strip().splitlines()))
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "runs").exists(), "a refused recipe must write nothing"


def test_shipped_example_validates_with_stand_in_files(tmp_path, teacher_folder) -> None:
    """`recipes/examples/lm-local-folder.yaml` points at the user's files (tests/test_recipes.py skips
    it for that reason): with the `--set` overrides its first line gives, it validates here."""
    from anydistill.catalog import load_recipe, shipped_recipes

    path = shipped_recipes()["examples/lm-local-folder"]
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run: anydistill run examples/lm-local-folder --set teacher.path=")
    train = write_jsonl(tmp_path / "chats.jsonl", conversations(40))
    overrides = [f"teacher.path={teacher_folder}", f"student.path={teacher_folder}", f"data.tokenizer={teacher_folder}",
                 f"data.train={train}", "data.block_size=64"]
    recipe = load_recipe("examples/lm-local-folder", overrides)
    assert set(recipe.methods) == {"lm-sft", "lm-kd"} and recipe.student.kwargs["keep_layers"] == [0, 2]
