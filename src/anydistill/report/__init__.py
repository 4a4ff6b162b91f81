"""Run reports: metric tables, PNG plots and a Markdown ``report.md`` built from a run directory.

``write_report(run_dir)`` is the entry point; ``metrics_table`` and ``console_table`` render the
same metrics table for Markdown and for the CLI.
"""

from __future__ import annotations

from anydistill.core.errors import AnydistillError


class ReportError(AnydistillError):
    """A run directory cannot be reported on; the message is one line that names the fix.

    An ``AnydistillError``, so the CLI prints it without a traceback and exits with status 2.
    """


# Imported after ReportError because markdown.py imports it from this package.
from anydistill.report.markdown import write_report  # noqa: E402
from anydistill.report.tables import console_table, html_table, metrics_table  # noqa: E402

__all__ = ["ReportError", "console_table", "html_table", "metrics_table", "write_report"]
