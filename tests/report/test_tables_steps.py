"""The CLI table of a family measured at several step counts: one row per model and step count."""

from __future__ import annotations

from anydistill.report.tables import rows_per_step, table_rows


def test_metrics_at_several_step_counts_become_rows() -> None:
    metrics = {"data": {"swd@0": 0.2}, "teacher": {"swd@1": 1.3, "swd@64": 0.16, "params": 10},
               "reflow": {"swd@1": 0.14, "params": 10}}
    rows, columns = rows_per_step(metrics, ["swd@0", "swd@1", "swd@64", "params"])
    assert columns == ["swd", "params"]
    assert list(rows) == ["data", "teacher (1 step)", "teacher (64 steps)", "reflow (1 step)"]
    assert rows["teacher (64 steps)"] == {"swd": 0.16, "params": 10}
    headers, cells = table_rows(rows, columns)
    assert headers == ["model", "swd", "params"] and cells[0] == ["data", "0.2", "—"]


def test_tables_without_step_counts_are_unchanged() -> None:
    metrics = {"kd": {"accuracy": 0.9}}
    assert rows_per_step(metrics, ["accuracy"]) == ({"kd": {"accuracy": 0.9}}, ["accuracy"])
