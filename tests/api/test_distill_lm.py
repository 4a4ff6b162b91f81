"""`anydistill.distill` for language models: the documented script runs on transformers models, a
tokenizer and a `datasets.Dataset` held in memory; a call trains the weights the equivalent recipe
trains; bad data or a vocabulary mismatch is one RecipeError in the recipe's words, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lm.local_folder import conversations, save_tiny_llama, write_jsonl

import anydistill
from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError
from anydistill.core.rundir import RunDir
from anydistill.runner import run_recipe

QUIET = {"progress_bar": False}
SMALL = {"prompt": "hello ,", "generate_tokens": 4}

# The language-model script of docs/python-api.md, verbatim: my-teacher and my-student are
# save_pretrained folders, chats.jsonl holds {"messages": [...]} rows.
LM_SCRIPT = """
import anydistill, datasets
from transformers import AutoModelForCausalLM, AutoTokenizer
teacher, student = AutoModelForCausalLM.from_pretrained("my-teacher"), AutoModelForCausalLM.from_pretrained("my-student")
tokenizer = AutoTokenizer.from_pretrained("my-teacher")
chats = datasets.load_dataset("json", data_files="chats.jsonl", split="train")
result = anydistill.distill(teacher, student, chats, method="lm-kd", tokenizer=tokenizer, epochs=1, data_options={"block_size": 64})
print(result)
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny 4-layer Llama and its tokenizer (with a chat template), as save_pretrained writes them."""
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def test_the_documented_script_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    save_tiny_llama(tmp_path / "my-teacher")
    save_tiny_llama(tmp_path / "my-student", seed=1, layers=2)
    write_jsonl(tmp_path / "chats.jsonl", conversations(24))
    exec(compile(LM_SCRIPT, "<docs script>", "exec"), {})
    printed = capsys.readouterr().out
    assert "lm-kd" in printed and "Run directory: runs/lm-kd-python" in printed
    export = tmp_path / "runs" / "lm-kd-python" / "checkpoints" / "lm-kd"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(export).config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(export).chat_template  # the tokenizer object travels with the student


def _recipe(folder: Path, train: Path) -> dict:
    return {"name": "same", "seed": 5,
            "data": {"name": "lm-dataset", "tokenizer": str(folder), "train": str(train), "block_size": 32, "batch_size": 4},
            "teacher": {"name": "hf-causal-lm", "path": str(folder)},
            "student": {"name": "hf-causal-lm", "path": str(folder), "keep_layers": [0, 2]},
            "trainer": {"max_epochs": 1, "max_steps": 3, **QUIET}, "optimizer": {"name": "adamw", "lr": 0.003},
            "evaluation": SMALL, "methods": {"lm-kd": {"alpha": 0.5}}}


def _in_memory(folder: Path) -> dict:
    """Teacher, student, rows and tokenizer as Python objects."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anydistill.models.hf_causal_lm import drop_layers

    return {"teacher": AutoModelForCausalLM.from_pretrained(folder), "tokenizer": AutoTokenizer.from_pretrained(folder),
            "student": drop_layers(AutoModelForCausalLM.from_pretrained(folder), [0, 2]),
            "data": datasets.Dataset.from_list(conversations(24))}


def _as_names(folder: Path) -> dict:
    """The teacher as its folder (whose tokenizer is then the default), the student as a mapping, the rows as dicts."""
    return {"teacher": folder, "student": {"name": "hf-causal-lm", "path": folder, "keep_layers": [0, 2]}, "data": conversations(24)}


@pytest.mark.parametrize("inputs", [_in_memory, _as_names], ids=["objects", "folders"])
def test_a_call_trains_the_weights_the_recipe_trains(inputs, tmp_path: Path, folder: Path) -> None:
    recipe = load_recipe(_recipe(folder, write_jsonl(tmp_path / "chats.jsonl", conversations(24))))
    trained: dict[str, torch.nn.Module] = {}
    run_recipe(recipe, RunDir.create(tmp_path, "recipe"), trained=trained)
    result = anydistill.distill(**inputs(folder), method="lm-kd", alpha=0.5, epochs=1, batch_size=4, data_options={"block_size": 32},
                                optimizer={"name": "adamw", "lr": 0.003}, trainer={"max_steps": 3, **QUIET}, evaluation=SMALL, seed=5,
                                run_dir=tmp_path / "python")
    for name, value in trained["lm-kd"].state_dict().items():
        torch.testing.assert_close(result.student.state_dict()[name], value, rtol=0, atol=0)
    expected = yaml.safe_load((tmp_path / "recipe" / "metrics.json").read_text())
    for label in ("teacher", "lm-kd"):
        assert result.rows[label]["nll"] == pytest.approx(expected[label]["nll"])
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["data"]["rows"] == "train 24 rows" and len(config["data"]["fingerprint"]) == 64
    recorded = config["data"]["tokenizer"]
    if inputs is _as_names:  # the teacher's folder, as the recipe names it
        assert recorded == str(folder) and config["teacher"] == {"name": "hf-causal-lm", "path": str(folder), **config["teacher"]}
    else:
        assert recorded["ids"] == 47 and len(recorded["fingerprint"]) == 64 and config["teacher"]["name"] == "in-memory"


def test_splits_and_formats_held_in_memory(tmp_path: Path, folder: Path) -> None:
    """A DatasetDict's validation and test splits are used as given; prompt-completion rows train."""
    import datasets

    rows = [{"prompt": "what is two plus two ?", "completion": "it is four ."}, {"prompt": "name a colour .", "completion": "red ."}]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows * 6), "validation": datasets.Dataset.from_list(rows),
                                   "test": datasets.Dataset.from_list(rows[:1] * 3)})
    result = anydistill.distill(student=folder, data=splits, method="lm-sft", epochs=1, batch_size=4, data_options={"block_size": 16},
                                trainer=QUIET, evaluation=SMALL, run_dir=tmp_path / "run")
    assert result.rows["lm-sft"]["nll"] > 0
    card = yaml.safe_load((result.run_dir / "evaluation.json").read_text())
    assert card["test_blocks"] == 3  # the test split as given, not held out of train


def test_bad_inputs_are_one_recipe_error_in_the_recipes_words(tmp_path: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anydistill.models.causal_lm import gpt2_lm

    teacher, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    runs = tmp_path / "runs"
    call = {"method": "lm-kd", "tokenizer": tokenizer, "data_options": {"block_size": 32}, "trainer": QUIET, "runs": runs}
    with pytest.raises(RecipeError) as error:
        anydistill.distill(teacher, folder, (torch.randn(8, 4), torch.zeros(8)), **call)
    assert error.value.problems == [(
        "distill(): data: got tuple; the language-model methods accept a Hugging Face datasets.Dataset, a DatasetDict with train "
        "(and validation/test) splits, a list of row dicts or of strings, a dict of columns, or {'train': ..., 'val': ..., 'test': ...} "
        "of those; rows in TRL's formats: {'text'}, {'prompt', 'completion'} or {'messages': [{'role', 'content'}, ...]}; or a "
        "data-module name or {'name': ..., options} mapping (e.g. {'name': 'lm-dataset', 'train': 'chats.jsonl', 'tokenizer': FOLDER}).")]
    with pytest.raises(RecipeError, match=r"^distill\(\): tokenizer: got int; give a transformers tokenizer"):
        anydistill.distill(teacher, folder, conversations(8), **{**call, "tokenizer": 3})
    with pytest.raises(RecipeError, match=r"tokenizer: the text needs its tokenizer; pass tokenizer="):
        anydistill.distill(teacher, teacher, conversations(8), **{**call, "tokenizer": None})
    with pytest.raises(RecipeError, match=r"has no 'messages', 'prompt' \+ 'completion' or 'text' column \(columns found: question, answer\)"):
        anydistill.distill(teacher, folder, [{"question": "hi", "answer": "yo"}] * 8, **call)

    # A student of another vocabulary: the recipe's line, word for word, whichever way it is given.
    recipe = _recipe(folder, write_jsonl(tmp_path / "chats.jsonl", conversations(24)))
    recipe["student"] = {"name": "gpt2-lm", "vocab_size": 96, "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}
    with pytest.raises(RecipeError) as from_recipe:
        load_recipe(recipe, source="recipe.yaml")
    student = gpt2_lm(vocab_size=96, n_layer=1, n_embd=16, n_head=2, n_positions=32)
    with pytest.raises(RecipeError) as from_call:
        anydistill.distill(teacher, student, conversations(24), alpha=0.5, **call)
    assert [p.removeprefix("recipe.yaml: ") for p in from_recipe.value.problems] == [
        p.removeprefix("distill(): ") for p in from_call.value.problems]
    assert "have different vocabularies" in from_call.value.problems[0] and len(from_call.value.problems) == 1
    with pytest.raises(RecipeError, match=r"The student's vocabulary \(20 logits\) is smaller than the tokenizer's 47 ids"):
        anydistill.distill(teacher, gpt2_lm(vocab_size=20, n_layer=1, n_embd=16, n_head=2, n_positions=32), conversations(24), **call)
    assert not runs.exists()


def test_several_teachers_by_name_route_each_row(tmp_path: Path, folder: Path) -> None:
    """teacher={name: module or folder} with mix="route": a row per teacher, NLL per domain, the
    in-memory teacher recorded under teachers.NAME; a bare teacher with mix is refused in one line."""
    from transformers import AutoModelForCausalLM

    other = save_tiny_llama(tmp_path / "other", seed=3)
    rows = [{"prompt": p, "completion": c, "domain": d} for p, c, d in
            [("what is two plus two ?", "it is four .", "math"), ("name a colour .", "red is a colour .", "chat")] * 12]
    result = anydistill.distill({"math": AutoModelForCausalLM.from_pretrained(folder), "chat": other},
                                {"name": "hf-causal-lm", "path": folder, "keep_layers": [0, 2]}, rows, method="lm-kd", mix="route",
                                tokenizer=folder, data_options={"block_size": 16, "domain_column": "domain"}, batch_size=4,
                                trainer={"max_steps": 2, **QUIET}, evaluation=SMALL, run_dir=tmp_path / "run")
    assert {"teacher-math", "teacher-chat", "lm-kd"} <= set(result.rows)
    assert result.rows["lm-kd"]["nll_math"] > 0 and result.rows["lm-kd"]["nll_chat"] > 0
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["teachers"]["math"]["name"] == "in-memory" and config["teachers"]["chat"]["path"] == str(other)
    assert config["mix"]["strategy"] == "route"
    with pytest.raises(RecipeError, match=r"^distill\(\): teacher: with mix, give the teachers by name"):
        anydistill.distill(folder, folder, rows, method="lm-kd", mix="average", runs=tmp_path / "runs")
