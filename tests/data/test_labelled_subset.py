"""`data.labelled_count`: a seeded, stratified labelled subset of the training split (Hinton et
al.'s transfer set). Methods that learn from teacher signals see every row, labels -100 outside
the subset; the others see only the labelled rows, for as many steps per epoch."""

from __future__ import annotations

import re

import pytest
import torch

from anydistill.catalog import load_recipe
from anydistill.core.errors import RecipeError
from anydistill.data.digits import DigitsData
from anydistill.losses import kd_kl, mix_with_ce


def served(data: DigitsData) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(data.train_dataloader())
    return torch.cat([b["y"] for b in batches]), torch.cat([b["x"] for b in batches])


def test_methods_with_teacher_signals_see_every_row_and_only_the_subsets_labels() -> None:
    data = DigitsData(batch_size=64, labelled_count=50)
    data.setup()
    x_train, y_train = data.split("train")
    data.use_unlabelled(True)
    y, x = served(data)
    assert len(y) == len(y_train) and int((y != -100).sum()) == 50
    assert torch.bincount(y[y != -100], minlength=10).tolist() == [5] * 10  # stratified
    rows = data.labelled_rows
    assert torch.equal(torch.sort(y[y != -100]).values, torch.sort(y_train[rows]).values)


def test_the_others_see_only_labelled_rows_for_a_whole_epochs_steps() -> None:
    data = DigitsData(batch_size=64, labelled_count=50)
    data.setup()
    data.use_unlabelled(False)
    y, x = served(data)
    x_train, y_train = data.split("train")
    assert len(y) == len(y_train) and (y != -100).all()  # as many rows as an epoch of the full split
    labelled = {tuple(r.flatten().tolist()) for r in x_train[data.labelled_rows]}
    assert all(tuple(r.flatten().tolist()) in labelled for r in x)
    # Each labelled row comes round once per pass over the subset (a permutation at a time).
    assert len({tuple(r.flatten().tolist()) for r in x[:50]}) == 50


def test_the_subset_follows_labelled_seed_not_the_run_seed() -> None:
    def rows(**kwargs):
        data = DigitsData(labelled_count=30, **kwargs)
        data.setup()
        return data.labelled_rows

    assert torch.equal(rows(seed=0), rows(seed=5))
    assert not torch.equal(rows(labelled_seed=0), rows(labelled_seed=1))


def test_without_labelled_count_the_loader_is_unchanged() -> None:
    data = DigitsData(batch_size=64)
    data.setup()
    for flag in (True, False):
        data.use_unlabelled(flag)
        y, _ = served(data)
        assert (y != -100).all() and len(y) == len(data.split("train")[1])


@pytest.mark.parametrize(("count", "found"), [(5, "give between 10 (one per class) and 1257"),
                                              (5000, "give between 10 (one per class) and 1257")])
def test_counts_outside_the_split_are_refused_at_validation(tmp_path, count, found) -> None:
    (tmp_path / "r.yaml").write_text(f"name: r\nseed: 0\ndata: {{name: digits, labelled_count: {count}}}\n"
                                     "teacher: {name: small-cnn}\nstudent: {name: mlp}\nmethods:\n  kd: {}\n")
    with pytest.raises(RecipeError, match=re.escape(found)):
        load_recipe(str(tmp_path / "r.yaml"))


def test_a_batch_without_labels_adds_no_cross_entropy() -> None:
    student, teacher = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
    soft = kd_kl(student, teacher, temperature=2.0)
    loss = mix_with_ce(soft, student, torch.full((4,), -100), alpha=0.5)
    assert torch.isfinite(loss) and torch.allclose(loss, 0.5 * soft)
    loss.backward()
    assert student.grad is not None


def test_a_run_with_a_labelled_subset_records_it_and_trains_every_method(tmp_path) -> None:
    import json

    import yaml

    from anydistill.cli import main

    (tmp_path / "r.yaml").write_text("name: few-labels\nseed: 0\ndata: {name: digits, batch_size: 64, labelled_count: 30}\n"
                                     "teacher: {name: small-cnn, channels: [8, 16], hidden: 32}\nstudent: {name: mlp, hidden: [16]}\n"
                                     "trainer: {max_epochs: 1, progress_bar: false}\nmethods:\n  teacher: {}\n  scratch: {}\n  kd: {}\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--runs", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "few-labels"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["labelled_count"] == 30 and config["data"]["labelled_seed"] == 0
    assert set(json.loads((run / "metrics.json").read_text())) == {"teacher", "scratch", "kd"}
