"""A resumed run's learning curve: the epochs logged before the interruption are put back, and the
epoch whose row Lightning had not yet written when the run was killed comes from its checkpoint."""

from __future__ import annotations

import csv

import torch

from anydistill.runner import EpochRowInCheckpoint, pending_epoch_row, read_csv_rows, restore_log_history


def write_rows(path, rows):
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_the_row_killed_before_it_was_written_comes_from_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.csv"
    # Before the kill: epochs 0-2 complete, epoch 3 checkpointed but its row never written.
    earlier = [{"epoch": str(e), "step": str(10 * e + 9), "train/loss_epoch": str(1.0 / (e + 1))} for e in range(3)]
    earlier.append({"epoch": "3", "step": "39", "val/accuracy": "0.9"})
    ckpt = tmp_path / "last.ckpt"
    torch.save({EpochRowInCheckpoint.KEY: {"epoch": 3, "step": 39, "train/loss_epoch": 0.25}}, ckpt)
    # After resuming from epoch 4, Lightning's logger starts the file anew.
    write_rows(log, [{"epoch": "4", "step": "49", "train/loss_epoch": "0.2"}])

    restore_log_history(log, earlier, pending_epoch_row(ckpt))
    rows = read_csv_rows(log)
    assert [r["epoch"] for r in rows if r.get("train/loss_epoch")] == ["0", "1", "2", "3", "4"]
    assert float(next(r for r in rows if r["epoch"] == "3" and r.get("train/loss_epoch"))["train/loss_epoch"]) == 0.25


def test_a_row_already_logged_is_not_added_twice(tmp_path):
    log = tmp_path / "metrics.csv"
    earlier = [{"epoch": str(e), "step": str(e), "train/loss_epoch": "1.0"} for e in range(4)]
    write_rows(log, [{"epoch": "4", "step": "4", "train/loss_epoch": "0.5"}])
    restore_log_history(log, earlier, {"epoch": 3, "step": 3, "train/loss_epoch": 1.0})
    assert [r["epoch"] for r in read_csv_rows(log)] == ["0", "1", "2", "3", "4"]
    assert pending_epoch_row(None) is None
