"""Several teachers through `anydistill run`: the shipped example with stand-in folders and tagged
rows (one teacher cached), a row per teacher and per domain in the metrics, every teacher's
fingerprint recorded, and each bad mix refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from anydistill.catalog import shipped_recipes
from anydistill.cli import main
from lm.local_folder import save_tiny_llama, write_jsonl

ROWS = [("what is two plus two ?", "it is four .", "math"), ("name a colour .", "red is a colour .", "code"),
        ("hello , how are you today ?", "i am well , thank you .", "code"), ("the sun is hot and", "the moon is cold .", "math")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {name: save_tiny_llama(root / name, seed=seed) for name, seed in (("math", 1), ("code", 2))}


def tagged(path: Path, n: int = 24, tags: tuple[str, ...] = ()) -> Path:
    return write_jsonl(path, [{"prompt": p, "completion": c, "domain": tags[i % len(tags)] if tags else d}
                              for i, (p, c, d) in enumerate(ROWS * (n // len(ROWS)))])


def example(tmp_path: Path, folders: dict[str, Path], train: Path, **changes) -> Path:
    """The shipped example with the stand-ins, tiny settings and ``changes`` (top-level sections)."""
    recipe = yaml.safe_load(shipped_recipes()["examples/lm-several-teachers"].read_text())
    recipe["data"].update(tokenizer=str(folders["math"]), train=str(train), val_fraction=0.2, test_fraction=0.2, block_size=32, batch_size=4)
    recipe["teachers"]["math"]["path"], recipe["teachers"]["code"]["path"] = str(folders["math"]), str(folders["code"])
    recipe["teachers"]["code"]["topk"] = 8
    recipe["student"]["path"] = str(folders["math"])
    recipe["trainer"] = {"max_epochs": 1, "max_steps": 3, "progress_bar": False}
    recipe["evaluation"] = {"prompt": "hello ,", "generate_tokens": 4}
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}, sort_keys=False))
    return path


def test_routed_teachers_run_end_to_end(tmp_path, folders, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the code teacher's top-k cache goes under .anydistill-cache here
    code = main(["run", str(example(tmp_path, folders, tagged(tmp_path / "mixed.jsonl"))), "--runs", str(tmp_path / "runs")])
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"teacher-math", "teacher-code", "lm-kd"} <= set(metrics) and metrics["teacher-math"]["role"] == "teacher"
    for domain in ("math", "code"):
        assert metrics["lm-kd"][f"nll_per_char_{domain}"] > 0
    assert metrics["teacher-math"]["nll"] != metrics["teacher-code"]["nll"]  # two different teachers were scored
    fingerprints = json.loads((run / "teachers.json").read_text())
    assert set(fingerprints) == {"math", "code"} and fingerprints["math"] != fingerprints["code"]
    assert yaml.safe_load((run / "config.yaml").read_text())["teachers"]["code"]["topk"] == 8
    assert list((tmp_path / ".anydistill-cache" / "lm-topk").iterdir())  # the code teacher was read from its cache


def bad_cases(tmp_path: Path, folders: dict[str, Path]) -> dict[str, tuple[dict, Path | None, str]]:
    """name -> (recipe changes, training rows or None for the tagged ones, a fragment of the one error line)."""
    untagged = write_jsonl(tmp_path / "untagged.jsonl", [{"prompt": p, "completion": c} for p, c, _ in ROWS * 6])
    other_tags = tagged(tmp_path / "other.jsonl", tags=("math", "chat"))
    gpt2 = {"name": "gpt2-lm", "vocab_size": 128, "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}
    math = {"name": "hf-causal-lm", "path": str(folders["math"])}
    return {
        "route column missing": ({}, untagged, "has no 'domain' column, which data.domain_column names"),
        "unknown teacher": ({}, other_tags, "the data's domain tag 'chat' names no teacher (teachers: math, code)"),
        "different vocabularies": ({"teachers": {"math": math, "code": gpt2}, "mix": "average"}, None,
                                   "different vocabularies (llama, 47 logits vs gpt2, 128 logits), and mix: average"),
        "weights not summing to 1": ({"mix": {"strategy": "weighted", "weights": {"math": 0.6, "code": 0.3}}}, None,
                                     "mix.weights: the weights must sum to 1 (they sum to 0.9)"),
        "one and several teachers": ({"teacher": math}, None, "give one teacher (teacher:) or several (teachers: with mix:), not both"),
        "a one-teacher method": ({"methods": {"seq-kd": {}}}, None, "method 'seq-kd' learns from one teacher; several teachers (teachers:) work with"),
        "no mix": ({"mix": None}, None, "several teachers need a mix: route"),
    }


@pytest.mark.parametrize("case", ["route column missing", "unknown teacher", "different vocabularies", "weights not summing to 1",
                                  "one and several teachers", "a one-teacher method", "no mix"])
def test_bad_mixes_are_refused_in_one_line(tmp_path, folders, capsys, case) -> None:
    changes, rows, fragment = bad_cases(tmp_path, folders)[case]
    recipe = example(tmp_path, folders, rows or tagged(tmp_path / "mixed.jsonl"), **changes)
    code = main(["run", str(recipe), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code != 0 and fragment in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written
