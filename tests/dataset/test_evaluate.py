"""The dataset evaluator: baselines at the set's size, the gap closed, the protocol card, and the
`evaluate-synset` command on a saved set (and its refusals)."""

from __future__ import annotations

import json

import pytest
import torch

from anydistill.cli import main
from anydistill.dataset.evaluate import SynsetEvaluator
from anydistill.dataset.synset import synthetic_set
from anydistill.data.digits import DigitsData

FAST = dict(epochs=3, num_models=2, net_width=8, random_subsets=2, full_data_epochs=2, dsa_strategy="none")


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    data = DigitsData()
    data.setup()
    return data


def test_baselines_and_gap_closed(digits) -> None:
    evaluator = SynsetEvaluator(digits, {"ipc": 2}, "digits", **FAST)
    rows = evaluator.baselines(skip=set())
    assert list(rows) == ["full-data", "random", "herding", "k-center"]
    assert rows["full-data"]["images"] == len(digits.split("train")[0])
    for name in ("random", "herding", "k-center"):
        assert rows[name]["images"] == 20 and rows[name]["ipc"] == 2
    assert len(rows["random"]["accuracies"]) == 2 * 2  # subsets x models
    synset = synthetic_set((1, 8, 8), 10, ipc=2)
    synset.init_from_real(*digits.split("train"), torch.Generator().manual_seed(0))
    rows["dm"] = evaluator.evaluate(synset, None, "dm")
    evaluator.summarise(rows)
    expected = (rows["dm"]["accuracy"] - rows["random"]["accuracy"]) / (rows["full-data"]["accuracy"] - rows["random"]["accuracy"])
    assert rows["dm"]["gap_closed"] == pytest.approx(expected)
    assert "gap_closed" not in rows["random"]
    assert evaluator.card()["eval_epochs"] == 3


def test_resumed_run_skips_measured_baselines(digits) -> None:
    evaluator = SynsetEvaluator(digits, {"ipc": 1}, "digits", **{**FAST, "baselines": ["random", "herding"]})
    assert list(evaluator.baselines(skip={"random"})) == ["herding"]


def test_learned_step_size_is_used(digits) -> None:
    synset = synthetic_set((1, 8, 8), 10, ipc=1, learn_lr=True, initial_lr=0.05)
    synset.init_from_real(*digits.split("train"), torch.Generator().manual_seed(0))
    assert SynsetEvaluator(digits, {"ipc": 1}, **FAST).evaluate(synset, None, "mtt")["eval_lr"] == pytest.approx(0.05)
    fixed = SynsetEvaluator(digits, {"ipc": 1}, **{**FAST, "use_learned_lr": False}).evaluate(synset, None, "mtt")
    assert fixed["eval_lr"] == 0.01


def test_settings_problems() -> None:
    assert SynsetEvaluator.settings_problems({"epochs": 0})
    assert SynsetEvaluator.settings_problems({"dsa_strategy": "crop", "dc_augment": True})
    assert SynsetEvaluator.settings_problems({"net_width": 0})
    assert not SynsetEvaluator.settings_problems({"epochs": 10, "dsa_strategy": None, "dc_augment": True})
    assert "score_split" in SynsetEvaluator.settings_problems({"score_split": "train"})[0]


def test_validation_scoring_never_touches_the_test_split(digits) -> None:
    """Settings are chosen on ``score_split: val``: the sets are scored on the validation images."""
    evaluator = SynsetEvaluator(digits, {"ipc": 1}, "digits", **FAST, score_split="val")
    assert torch.equal(evaluator.x_test, digits.split("val")[0]) and evaluator.card()["score_split"] == "val"
    assert evaluator.card()["test_images"] == len(digits.split("val")[0]) != len(digits.split("test")[0])


def test_evaluate_synset_command(digits, tmp_path, capsys) -> None:
    synset = synthetic_set((1, 8, 8), 10, ipc=1)
    synset.init_from_real(*digits.split("train"), torch.Generator().manual_seed(0))
    saved = tmp_path / "set"
    synset.save(saved, source_fingerprint=digits.fingerprint("train"), method="dm", normalisation=digits.normalisation,
                source_data="digits")
    out = tmp_path / "scores.json"
    settings = [f"--set={k}={v if v is not None else 'none'}" for k, v in FAST.items() if k != "random_subsets"]
    assert main(["evaluate-synset", str(saved), *settings, "--baselines", "random", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"synset", "random"} and rows["synset"]["method"] == "dm"

    other = tmp_path / "other"
    synset.save(other, source_fingerprint="not-this-data", method="dm", normalisation=digits.normalisation, source_data="digits")
    assert main(["evaluate-synset", str(other)]) == 2
    assert "fingerprint mismatch" in capsys.readouterr().err
    (saved / "synset.safetensors").write_bytes(b"corrupt")
    assert main(["evaluate-synset", str(saved)]) == 2
    assert "checksum" in capsys.readouterr().err
