"""What `anydistill.distill` returns: the trained model(s), the metrics table and the run directory."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from anydistill.report.tables import console_table, html_table


@dataclass
class DistillResult:
    """One Python-API run.

    Attributes:
        label: the method's label in the run (its name unless given).
        models: every model trained in the run by label (the distilled student, any baselines
            added with `compare`).
        rows: the run's metrics.json (label -> metrics), every row scored by the same evaluator.
        run_dir: the run directory (config.yaml, metrics.json, report.md, plots/, checkpoints/).
        headline: the evaluator's headline metric patterns (the columns shown by default).
    """

    label: str
    models: dict[str, nn.Module]
    rows: dict[str, dict[str, Any]]
    run_dir: Path
    headline: tuple[str, ...] = ()
    session: Any = field(default=None, repr=False)  # anydistill.api.distill.Session: compare() and evaluate()

    @property
    def student(self) -> nn.Module:
        """The trained student of the method this call distilled with (for the dataset family,
        the `SyntheticSet`)."""
        return self.models[self.label]

    @property
    def synset(self) -> Any:
        """The synthetic set a dataset-distillation method learned (``.images``, ``.labels``, ``.save()``)."""
        if not hasattr(self.student, "images"):
            raise AttributeError(f"'{self.label}' trained a {type(self.student).__name__}, not a synthetic set; use .student.")
        return self.student

    @property
    def metrics(self) -> Any:
        """The metrics as a pandas DataFrame (one row per model) when pandas is installed, else the dict."""
        try:
            import pandas as pd
        except ImportError:
            return self.rows
        return pd.DataFrame.from_dict(self.rows, orient="index")

    def compare(self, *methods: str, **params: dict[str, Any]) -> DistillResult:
        """Train more methods (``"scratch"``, ``"dkd"``...) on the same data, with the same models,
        seed and evaluator, into the same run directory; ``params`` maps a method to its parameters
        (``compare("dkd", dkd={"beta": 4.0})``). Returns this result, with the new rows and models."""
        if self.session is None:
            raise RuntimeError("this result was not made by anydistill.distill; it cannot train more methods.")
        return self.session.compare(self, [*methods, *[m for m in params if m not in methods]], params)

    def evaluate(self, **settings: Any) -> dict[str, dict[str, Any]]:
        """Score every trained model again with the family's evaluator under other ``settings``
        (the recipe's ``evaluation`` keys, e.g. a synthetic set with ``num_models=5, epochs=1000``);
        returns ``{label: metrics}`` and leaves the run directory as it is."""
        if self.session is None:
            raise RuntimeError("this result was not made by anydistill.distill; it cannot be evaluated again.")
        return self.session.evaluate(self, settings)

    def figures(self) -> dict[str, Any]:
        """The report's figures (matplotlib ``Figure``s by caption: learning curves, accuracy vs.
        size), drawn from the run directory; the same images are saved under ``run_dir/plots``."""
        from anydistill.report.markdown import run_figures

        return {caption: figure for caption, (_, figure) in run_figures(self.run_dir, self.rows).items() if figure is not None}

    def table(self) -> Any:
        """The headline columns as a rich ``Table`` (what the CLI prints)."""
        return console_table(self.rows, title=f"{self.run_dir.name}: test split", columns=self.headline)

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(file=io.StringIO(), width=140)
        console.print(self.table())
        return console.file.getvalue().rstrip() + f"\nRun directory: {self.run_dir}"

    def _repr_html_(self) -> str:
        return html_table(self.rows, title=f"{self.run_dir.name}: test split", columns=self.headline) + (
            f"<p>Run directory: <code>{self.run_dir}</code></p>")
