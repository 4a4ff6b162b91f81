"""Tests for the run report: tables, plots and report.md built from a fake run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from anydistill.report import ReportError, console_table, metrics_table, write_report
from anydistill.report.plots import plot_accuracy_vs_params, plot_learning_curves, read_log_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CONFIG = {
    "name": "digits-kd",
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64},
    "teacher": {"name": "mlp", "hidden": 256},
    "student": {"name": "mlp", "hidden": 16},
    "trainer": {"max_epochs": 3},
    "methods": ["scratch", "kd"],
}

METRICS = {
    "teacher": {
        "accuracy": 0.9905,
        "ece": 0.012345,
        "params": 1234567,
        "latency_ms": 3.14159,
        "teacher_agreement": 1.0,
        "role": "teacher",
    },
    "scratch": {
        "accuracy": 0.95123,
        "ece": 0.0456,
        "params": 23456,
        "latency_ms": 0.5,
        "teacher_agreement": 0.951,
        "val_accuracy": 0.96,
        "method": "scratch",
        "role": "baseline",
    },
    # No ece, no val_accuracy, and a metric key the table has never seen.
    "kd": {
        "accuracy": 0.9678,
        "params": 23456,
        "latency_ms": 0.512,
        "teacher_agreement": 0.97,
        "nll": 0.12345,
        "method": "kd",
        "role": "student",
    },
}

# Lightning CSVLogger layout: sorted columns, sparse rows (per-step, validation, epoch-end).
CSV_HEADER = "epoch,step,train/loss_epoch,train/loss_step,val/accuracy,val/loss\n"


def _lightning_csv(accuracies: list[float], losses: list[float]) -> str:
    lines = [CSV_HEADER]
    step = 0
    for epoch, (acc, loss) in enumerate(zip(accuracies, losses)):
        for _ in range(2):
            lines.append(f"{epoch},{step},,{loss + 0.1},,\n")
            step += 1
        lines.append(f"{epoch},{step - 1},,,{acc},{loss}\n")
        lines.append(f"{epoch},{step - 1},{loss},,,\n")
    return "".join(lines)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "digits-kd"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    (run / "run.json").write_text(
        json.dumps(
            {
                "versions": {"anydistill": "0.1.0", "torch": "2.13.0"},
                "seed": 0,
                "command": "anydistill run recipes/digits-kd.yaml",
                "world_size": 1,
            }
        )
    )
    (run / "metrics.json").write_text(json.dumps(METRICS))
    for label, accs, losses in (
        ("scratch", [0.80, 0.90, 0.94], [1.2, 0.6, 0.4]),
        ("kd", [0.85, 0.93, 0.96], [1.5, 0.9, 0.7]),
    ):
        (run / "logs" / label).mkdir(parents=True)
        (run / "logs" / label / "metrics.csv").write_text(_lightning_csv(accs, losses))
    return run


def test_report_has_formatted_table_plots_config_and_versions(run_dir: Path) -> None:
    out = write_report(run_dir)

    assert out == run_dir / "report.md"
    text = out.read_text()
    assert text.startswith("# Run report: digits-kd\n")
    # Columns: known keys in fixed order, then the rest (nll, val_accuracy) alphabetically.
    assert (
        "| model | accuracy (%) | ECE | params | latency (ms) | teacher agreement (%) | nll | val accuracy (%) |"
        in text
    )
    assert "| teacher | 99.05 | 0.0123 | 1,234,567 | 3.14 | 100.00 | — | — |" in text
    assert "| scratch | 95.12 | 0.0456 | 23,456 | 0.50 | 95.10 | — | 96.00 |" in text
    assert "| kd | 96.78 | — | 23,456 | 0.51 | 97.00 | 0.1235 | — |" in text
    # Rows keep metrics.json order.
    assert text.index("| teacher |") < text.index("| scratch |") < text.index("| kd |")

    for name in ("learning_curves.png", "accuracy_vs_params.png"):
        png = run_dir / "plots" / name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"](plots/{name})" in text  # relative link, so the run dir can move

    config_block = text.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(config_block) == CONFIG
    assert "| torch | 2.13.0 |" in text
    assert "`anydistill run recipes/digits-kd.yaml`" in text
    # Atomic writes leave no temporary files behind.
    assert not [p for p in run_dir.rglob("*.tmp")]


def test_missing_metrics_json_raises_report_error_naming_the_fix(run_dir: Path) -> None:
    (run_dir / "metrics.json").unlink()
    with pytest.raises(ReportError, match=r"no metrics\.json.*anydistill run --resume"):
        write_report(run_dir)
    assert not (run_dir / "report.md").exists()


@pytest.mark.parametrize("content", ['{"kd": {"accuracy": 0.9', "[1, 2]", "{}"])
def test_corrupt_metrics_json_raises_report_error(run_dir: Path, content: str) -> None:
    (run_dir / "metrics.json").write_text(content)
    with pytest.raises(ReportError, match=r"metrics\.json"):
        write_report(run_dir)


def test_missing_config_raises_report_error(run_dir: Path) -> None:
    (run_dir / "config.yaml").unlink()
    with pytest.raises(ReportError, match=r"no config\.yaml"):
        write_report(run_dir)


def test_report_without_run_json_or_logs(run_dir: Path) -> None:
    (run_dir / "run.json").unlink()
    for csv_path in run_dir.glob("logs/*/metrics.csv"):
        csv_path.unlink()
    # A stale image from an earlier report must not survive next to a report that omits it.
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "learning_curves.png").write_bytes(PNG_MAGIC)

    text = write_report(run_dir).read_text()

    assert "run.json is missing" in text
    assert "- seed: `0`" in text  # falls back to the recipe's seed
    assert "learning_curves.png" not in text
    assert not (run_dir / "plots" / "learning_curves.png").exists()
    assert "](plots/accuracy_vs_params.png)" in text


def test_unknown_metric_becomes_a_column_and_missing_values_render_as_dash() -> None:
    table = metrics_table({"a": {"accuracy": 0.5, "fid": 12.5, "zeta": 3}, "b": {"fid": 20000.4, "tag": "x"}})
    lines = table.splitlines()
    assert lines[0] == "| model | accuracy (%) | fid | zeta |"
    assert lines[1] == "| :--- | ---: | ---: | ---: |"
    assert lines[2] == "| a | 50.00 | 12.5 | 3 |"
    assert lines[3] == "| b | — | 20,000 | — |"


def test_console_table_matches_markdown_cells() -> None:
    console = Console(record=True, width=200)
    console.print(console_table(METRICS))
    rendered = console.export_text()
    for cell in ("teacher", "99.05", "1,234,567", "0.1235", "—", "val accuracy (%)"):
        assert cell in rendered


def test_console_table_keeps_an_evaluators_headline_columns_in_pattern_order() -> None:
    metrics = {"teacher": {"swd@1": 1.37, "swd@64": 0.115, "swd_std@0": 0.02, "coupling@1": 1.9, "params": 9000, "nfe": 64},
               "student": {"swd@1": 0.101, "coupling@1": 0.09, "params": 9000, "nfe": 1}}
    console = Console(record=True, width=200)
    console.print(console_table(metrics, columns=("swd@*", "params")))
    rendered = console.export_text()
    header = next(line for line in rendered.splitlines() if "model" in line)
    assert header.index("swd") < header.index("params")  # pattern order, not alphabetical
    lines = rendered.splitlines()
    assert [i for i, line in enumerate(lines) if "teacher (1 step)" in line] < [i for i, line in enumerate(lines) if "teacher (64 steps)" in line]
    assert "coupling" not in rendered and "swd_std" not in rendered and "3 more columns in report.md" in rendered


def test_read_log_csv_keeps_only_filled_cells(run_dir: Path) -> None:
    series = read_log_csv(run_dir / "logs" / "scratch" / "metrics.csv")
    assert series["val/accuracy"] == [(0.0, 0.80), (1.0, 0.90), (2.0, 0.94)]
    assert series["train/loss_epoch"] == [(0.0, 1.2), (1.0, 0.6), (2.0, 0.4)]
    assert len(series["train/loss_step"]) == 6


def test_plots_return_none_without_data(tmp_path: Path) -> None:
    empty_csv = tmp_path / "metrics.csv"
    empty_csv.write_text("epoch,step,train/loss_step\n0,0,1.0\n")
    assert plot_learning_curves({"kd": empty_csv}, tmp_path / "curves.png") is None
    assert plot_accuracy_vs_params({"kd": {"accuracy": 0.9, "params": 10}}, tmp_path / "acc.png") is None
    assert not list(tmp_path.glob("*.png"))


def test_generations_are_shown_verbatim(run_dir: Path) -> None:
    metrics = {**METRICS, "lm-kd": {"nll": 2.3, "greedy": "ROMEO:\nBut soft | ``` what light", "sample": "JULIET: Ay me"}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    text = write_report(run_dir).read_text()
    section = text.split("## Generations\n", 1)[1].split("\n## ", 1)[0]
    assert "**lm-kd**, greedy:" in section and "**lm-kd**, sample:" in section
    assert "````\nROMEO:\nBut soft | ``` what light\n````" in section  # the fence outlasts the text's backticks


def test_no_generations_section_without_text(run_dir: Path) -> None:
    assert "## Generations" not in write_report(run_dir).read_text()
