"""`trainer.logger`: the CSV log is always written (the report reads it); MLflow logs to a local
store (SQLite) under the run directory, nothing leaves the machine."""

from __future__ import annotations

import sqlite3

from e2e.helpers import TINY_RECIPE, anydistill


def test_mlflow_logger_writes_a_local_store_beside_the_csv_log(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE.replace("max_epochs: 2", "max_epochs: 1").replace("  kd: {temperature: 2.0, alpha: 0.7}\n", ""))
    result = anydistill("run", "tiny.yaml", "--name", "m", "--set", "trainer.logger=mlflow", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "runs" / "m"
    assert (run / "logs" / "scratch" / "metrics.csv").is_file()
    with sqlite3.connect(run / "mlflow.db") as db:  # MLflow's own store, read without MLflow
        logged = {key for (key,) in db.execute("SELECT DISTINCT key FROM metrics")}
        runs = {name for (name,) in db.execute("SELECT name FROM runs")}
    assert runs == {"teacher", "scratch"} and any(key.startswith("train") for key in logged), (runs, logged)
    assert (run / "report.md").is_file()


def test_unknown_logger_is_refused(tmp_path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    result = anydistill("validate", "tiny.yaml", "--set", "trainer.logger=wandb", cwd=tmp_path)
    assert result.returncode == 2 and "trainer.logger" in result.stderr and "'csv', 'tensorboard' or 'mlflow'" in result.stderr
