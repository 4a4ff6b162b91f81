"""Metric tables: one row per model label, one column per numeric metric.

The same columns and cell strings feed both the Markdown report (`metrics_table`) and the CLI
(`console_table`), so what a user sees in the terminal is exactly what the report says.

`metrics` is the content of a run's ``metrics.json``: ``{label: {metric: value, ...}, ...}``.
Entries may lack keys (rendered as ``MISSING``) and families add their own metric keys
(``nll``, ``fid``, ...), so the columns are discovered from the data rather than fixed.
"""

from __future__ import annotations

import fnmatch
import html
import math
import re
from collections.abc import Mapping, Sequence
from numbers import Real

from rich.table import Table
from rich.text import Text

MISSING = "—"

# Known metrics come first, in this order, because readers compare quality before cost;
# every other numeric key follows alphabetically so the layout is stable across runs.
KNOWN_ORDER = ("accuracy", "accuracy_std", "gap_closed", "ece", "params", "latency_ms", "teacher_agreement")

# Numbers about how a model was run, not how good it is: kept in metrics.json, not in tables.
NOT_METRICS = frozenset({"world_size", "threads"})

# Fractions in 0..1 that read best as percentages.
PERCENT_KEYS = frozenset({"accuracy", "accuracy_std", "teacher_agreement", "val_accuracy"})

HEADERS = {
    "accuracy": "accuracy (%)",
    "ece": "ECE",
    "params": "params",
    "latency_ms": "latency (ms)",
    "teacher_agreement": "teacher agreement (%)",
    "val_accuracy": "val accuracy (%)",
    "accuracy_std": "± std (%)",
    "gap_closed": "gap closed",
    "train_time_s": "train time (s)",
    "eval_s_per_model": "s to train a model on it",
}


def _is_number(value: object) -> bool:
    # bool is a subclass of int, but a flag is not a metric.
    return isinstance(value, Real) and not isinstance(value, bool)


def metric_columns(metrics: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Return the metric keys to show: the union of numeric keys over all entries.

    Known keys come first in ``KNOWN_ORDER``; the rest follow alphabetically.
    """
    numeric = {key for entry in metrics.values() for key, value in entry.items() if _is_number(value)} - NOT_METRICS
    known = [key for key in KNOWN_ORDER if key in numeric]
    return known + sorted(numeric - set(KNOWN_ORDER))


def header(key: str) -> str:
    """Human-readable column header for a metric key (the key itself when unknown)."""
    return HEADERS.get(key, key)


def format_value(key: str, value: object) -> str:
    """Format one cell: percent for accuracy-like keys, 4 decimals for ECE, and so on.

    A missing value (``None``) renders as ``MISSING``; a non-numeric value as its string.
    """
    if value is None:
        return MISSING
    if not _is_number(value):
        return str(value)
    if not math.isfinite(value):
        # NaN / inf are worth showing as such, but "nan%" would look like a formatting bug.
        return str(float(value))
    if key in PERCENT_KEYS:
        return f"{100 * value:.2f}"
    if key == "ece":
        return f"{value:.4f}"
    if key == "params":
        return f"{int(value):,}"
    if key == "latency_ms":
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    # Unknown float metrics (nll, fid, ...) span many magnitudes: 4 significant digits keep
    # small values readable, and large ones switch to grouped integers instead of 1.2e+04.
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def table_rows(metrics: Mapping[str, Mapping[str, object]], columns: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Return ``(headers, rows)`` of formatted strings; the first column is the model label.
    ``columns``: the metric keys in display order (default: `metric_columns`)."""
    columns = metric_columns(metrics) if columns is None else list(columns)
    headers = ["model"] + [header(key) for key in columns]
    rows = [
        [str(label)] + [format_value(key, entry.get(key)) for key in columns]
        for label, entry in metrics.items()
    ]
    return headers, rows


def _escape_markdown(cell: str) -> str:
    # A bare "|" would split the cell in a GitHub table.
    return cell.replace("|", "\\|")


def metrics_table(metrics: Mapping[str, Mapping[str, object]]) -> str:
    """Render ``metrics`` as a GitHub Markdown table, rows in the given order.

    Numeric columns are right-aligned so digits line up in rendered views.
    """
    headers, rows = table_rows(metrics)
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(_escape_markdown(c) for c in line) + " |" for line in lines)


def headline_columns(metrics: Mapping[str, Mapping[str, object]], patterns: Sequence[str]) -> list[str]:
    """The metric keys matching ``patterns`` (fnmatch), in pattern order; no patterns: all of them."""
    columns = metric_columns(metrics)
    if not patterns:
        return columns
    return list(dict.fromkeys(key for pattern in patterns for key in columns if fnmatch.fnmatchcase(key, pattern)))


def rows_per_step(metrics: Mapping[str, Mapping[str, object]], columns: Sequence[str]) -> tuple[dict[str, dict[str, object]], list[str]]:
    """Metrics measured at several step counts (``swd@1``, ``swd@4``...) as one row per model and
    step count (``"teacher (4 steps)"``) with one column per metric (``swd``), the other columns
    (``params``) repeated: a few rows read better than one column per metric and step.
    ``({label: {column: value}}, columns)``; unchanged when no column has a step count."""
    stepped = [c for c in columns if re.fullmatch(r".+@\d+", c)]
    if not stepped:
        return {k: dict(v) for k, v in metrics.items()}, list(columns)
    bases = list(dict.fromkeys(c.rsplit("@", 1)[0] for c in stepped))
    plain = [c for c in columns if c not in stepped]
    rows: dict[str, dict[str, object]] = {}
    for label, entry in metrics.items():
        for steps in sorted({int(c.rsplit("@", 1)[1]) for c in stepped if _is_number(entry.get(c))}):
            name = label if steps == 0 else f"{label} ({steps} step{'s' if steps > 1 else ''})"  # 0: the data itself
            rows[name] = {**{b: entry.get(f"{b}@{steps}") for b in bases}, **{p: entry.get(p) for p in plain}}
    return rows, [*bases, *plain]


def console_table(metrics: Mapping[str, Mapping[str, object]], title: str | None = None, columns: Sequence[str] = ()) -> Table:
    """Render ``metrics`` as a rich ``Table`` for the CLI, same cells as ``metrics_table``; with
    ``columns`` (an evaluator's ``headline`` patterns) only those, the rest counted in a caption.
    Metrics at several step counts get a row per model and step count (`rows_per_step`)."""
    shown = headline_columns(metrics, columns)
    hidden = len(metric_columns(metrics)) - len(shown)
    headers, rows = table_rows(*rows_per_step(metrics, shown))
    table = Table(title=title, caption=f"{hidden} more columns in report.md" if hidden else None)
    table.add_column(headers[0], justify="left", style="bold", no_wrap=True)
    for name in headers[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        # Text(), not str: a label like "kd[t=4]" must not be parsed as rich markup.
        table.add_row(*(Text(cell) for cell in row))
    return table


def html_table(metrics: Mapping[str, Mapping[str, object]], title: str | None = None, columns: Sequence[str] = ()) -> str:
    """Render ``metrics`` as an HTML table (a notebook's rich display), same cells as `console_table`."""
    shown = headline_columns(metrics, columns)
    headers, rows = table_rows(*rows_per_step(metrics, shown))
    cells = lambda tag, line: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in line)  # noqa: E731
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table>{caption}<thead><tr>{cells('th', headers)}</tr></thead><tbody>{body}</tbody></table>"
