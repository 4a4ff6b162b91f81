"""PNG plots for run reports: learning curves and accuracy against model size.

Figures are built with ``matplotlib.figure.Figure`` directly (Agg canvas) rather than pyplot, so
nothing here touches matplotlib's global state or needs a display, and plotting from a training
process or a test never opens a window or leaks figures.

Each function returns the written path, or ``None`` when there is nothing worth drawing, so the
caller can leave the plot out of the report instead of embedding an empty image.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from numbers import Real
from pathlib import Path

from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Lightning names an epoch-aggregated metric "<name>_epoch" when it is also logged per step,
# and plain "<name>" when it is logged per epoch only; accept either, preferring the former.
VAL_ACCURACY_KEYS = ("val/accuracy",)
TRAIN_LOSS_KEYS = ("train/loss_epoch", "train/loss")

Series = list[tuple[float, float]]


class LogReadError(ValueError):
    """A CSV log cannot be parsed; the message names the file."""


def read_log_csv(path: Path) -> dict[str, Series]:
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` into ``{column: [(epoch, value), ...]}``.

    Rows are sparse (each fills only the columns logged at that step, the rest are empty
    strings), so every column gets only the rows where it has a value. Rows without an epoch
    and cells that do not parse as numbers are skipped (a crash can truncate the last row).
    Series are sorted by epoch.

    Raises:
        LogReadError: the file is not a readable CSV (binary garbage, NUL bytes); names the file.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (csv.Error, UnicodeDecodeError) as err:
        raise LogReadError(f"{path} is not a readable CSV log ({err})") from err
    series: dict[str, Series] = {}
    for row in rows:
        epoch = _to_float(row.get("epoch"))
        if epoch is None:
            continue
        for column, cell in row.items():
            # column is None for surplus cells of a malformed row.
            if column is None or column in ("epoch", "step"):
                continue
            value = _to_float(cell)
            if value is not None:
                series.setdefault(column, []).append((epoch, value))
    for points in series.values():
        # Stable sort: several validations inside one epoch keep their logged order.
        points.sort(key=lambda point: point[0])
    return series


def _to_float(cell: object) -> float | None:
    if cell is None or cell == "":
        return None
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _first_series(series: Mapping[str, Series], keys: tuple[str, ...]) -> Series:
    for key in keys:
        if series.get(key):
            return series[key]
    return []


def label_colors(labels: Iterable[str]) -> dict[str, str]:
    """Assign each label a colour of matplotlib's default cycle, in order.

    Passing the same mapping to every plot of a report keeps a model the same colour throughout.
    """
    palette = rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: palette[index % len(palette)] for index, label in enumerate(labels)}


def save_figure(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as PNG to ``out`` atomically (temp file + ``os.replace``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    # Same directory as the target so os.replace is an atomic rename; a plain open (not mkstemp)
    # so the image gets the usual umask permissions instead of owner-only 0600.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def plot_learning_curves(
    log_csvs: Mapping[str, Path], out: Path, colors: Mapping[str, str] | None = None
) -> Path | None:
    """Write `learning_curves_figure` as a PNG at ``out``; ``None`` (nothing written) when it has no data."""
    fig = learning_curves_figure(log_csvs, colors)
    return save_figure(fig, out) if fig is not None else None


def learning_curves_figure(log_csvs: Mapping[str, Path], colors: Mapping[str, str] | None = None) -> Figure | None:
    """Validation accuracy and training loss per epoch, one line per label.

    Args:
        log_csvs: model label -> path of its Lightning ``metrics.csv``.
        colors: label -> matplotlib colour (see ``label_colors``); default: cycle in order.

    Returns:
        The figure, or ``None`` when no CSV holds a validation accuracy or an epoch training loss.
    """
    curves = {}
    for label, path in log_csvs.items():
        series = read_log_csv(Path(path))
        curves[label] = (
            _first_series(series, VAL_ACCURACY_KEYS),
            _first_series(series, TRAIN_LOSS_KEYS),
        )
    if not any(val or loss for val, loss in curves.values()):
        return None

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    # One colour per label across both panels, even when a label lacks one of the curves.
    colors = {**label_colors(curves), **(colors or {})}
    for label, (val, loss) in curves.items():
        color = colors[label]
        # Markers, because a one-epoch run is a single point and a bare line would be invisible.
        if val:
            epochs, values = zip(*val)
            ax_acc.plot(epochs, [100 * v for v in values], marker="o", ms=3, color=color, label=label)
        if loss:
            epochs, values = zip(*loss)
            ax_loss.plot(epochs, values, marker="o", ms=3, color=color, label=label)

    for ax, title, ylabel in (
        (ax_acc, "Validation accuracy", "accuracy (%)"),
        (ax_loss, "Training loss (epoch mean)", "loss"),
    ):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        # Epochs are whole numbers; fractional ticks (0.5, 1.5) would suggest otherwise.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data():
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_accuracy_vs_params(
    metrics: Mapping[str, Mapping[str, object]], out: Path, colors: Mapping[str, str] | None = None
) -> Path | None:
    """Write `accuracy_vs_params_figure` as a PNG at ``out``; ``None`` (nothing written) when it has no data."""
    fig = accuracy_vs_params_figure(metrics, colors)
    return save_figure(fig, out) if fig is not None else None


def accuracy_vs_params_figure(metrics: Mapping[str, Mapping[str, object]], colors: Mapping[str, str] | None = None) -> Figure | None:
    """Test accuracy against parameter count (log x), one labelled point per model.

    The teacher (``role == "teacher"``) is drawn as a star so the trade-off reads at a glance.
    ``colors`` maps label -> colour (see ``label_colors``); default: cycle in ``metrics`` order.

    Returns:
        The figure, or ``None`` when fewer than two models have both ``accuracy`` and ``params``.
    """
    points = [
        (label, float(entry["params"]), 100 * float(entry["accuracy"]), entry.get("role"))
        for label, entry in metrics.items()
        if _positive_number(entry.get("params")) and _finite_number(entry.get("accuracy"))
    ]
    # A single point has no trade-off to show.
    if len(points) < 2:
        return None

    colors = {**label_colors(metrics), **(colors or {})}
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, params, accuracy, role in points:
        marker, size = ("*", 160) if role == "teacher" else ("o", 50)
        ax.scatter(params, accuracy, marker=marker, s=size, color=colors[label], zorder=3)
        ax.annotate(label, (params, accuracy), xytext=(5, 5), textcoords="offset points", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs. model size")
    ax.grid(True, which="both", alpha=0.3)
    # Room for the labels of the outermost points, which log scaling would otherwise clip.
    ax.margins(x=0.15, y=0.12)
    return fig


def _finite_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: object) -> bool:
    return _finite_number(value) and value > 0
