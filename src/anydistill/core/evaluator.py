"""`Evaluator`: how a family scores, exports and compares what its methods train.

Every model of a run (teacher, baselines, students) is measured by the same evaluator instance,
so the numbers in one ``metrics.json`` are comparable. A recipe's ``evaluation:`` section holds
the keyword arguments of its family's evaluator; the runner injects ``data`` (the set-up data
module), ``student_spec`` (the recipe's resolved ``student`` section) and ``data_name`` (the data
module's registry name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from anydistill.core.teacher import Teacher


class Evaluator:
    """Base class; the defaults do nothing, so a family overrides only what it needs."""

    # Metric keys (fnmatch patterns, in display order) of the terminal table after a run; the
    # report keeps every column. Empty: every column (the classifier family has few).
    headline: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data: Any, student_spec: dict[str, Any] | None = None, data_name: str | None = None):
        self.data = data
        self.student_spec = student_spec or {}
        self.data_name = data_name

    @classmethod
    def settings_problems(cls, settings: dict[str, Any]) -> list[str]:
        """Problems with the recipe's ``evaluation:`` values beyond their types (ranges, combinations)."""
        return []

    @classmethod
    def model_problems(cls, settings: dict[str, Any], *, teacher_model: nn.Module | None, student_model: nn.Module | None) -> list[str]:
        """Problems with the ``evaluation:`` values given the recipe's built (untrained) models, e.g.
        module paths they lack; checked by `validate` before anything is trained."""
        return []

    def callbacks(self, label: str, directory: Path) -> list[Any]:
        """Lightning callbacks that score the model being trained by method ``label`` while it trains
        (learning curves), writing under ``directory`` (the method's log folder). None by default."""
        return []

    def baselines(self, skip: set[str]) -> dict[str, dict[str, Any]]:
        """Rows measured once per run without any method (random subsets, full data...): ``label -> row``.
        Labels in ``skip`` are already measured (a resumed run) and are not measured again."""
        return {}

    def evaluate(self, model: nn.Module, teacher: Teacher | None, method: str) -> dict[str, Any]:
        """One row of metrics for ``model``, trained by ``method``; ``teacher`` is the run's teacher (or ``None``)."""
        raise NotImplementedError

    def export(self, model: nn.Module, spec: dict[str, Any], directory: Path, method: str) -> Path:
        """Write ``model`` under ``directory`` so that it can be used without anydistill's run."""
        raise NotImplementedError

    def summarise(self, metrics: dict[str, dict[str, Any]]) -> None:
        """Add cross-row figures (e.g. the gap closed) to ``metrics`` in place, once all rows exist."""

    def card(self) -> dict[str, Any]:
        """How the rows were measured, written as ``evaluation.json`` when not empty."""
        return {}
