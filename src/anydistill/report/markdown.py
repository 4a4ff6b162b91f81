"""Markdown run report: ``write_report(run_dir)`` turns a finished run directory into ``report.md``.

A run directory written by the engine holds::

    config.yaml              resolved recipe (required)
    run.json                 {"versions": {...}, "seed": ..., "command": ..., "world_size": ...} (optional)
    metrics.json             {label: {metric: value}} (required; written when the run finishes)
    logs/<label>/metrics.csv Lightning CSVLogger output (optional, one per trained label)

The report is written next to them as ``report.md`` with its figures in ``plots/``, linked by
relative paths so the directory can be moved or browsed on GitHub as is.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from anydistill.report import ReportError
from anydistill.report.plots import (
    Figure,
    LogReadError,
    accuracy_vs_params_figure,
    label_colors,
    learning_curves_figure,
    save_figure,
)
from anydistill.report.tables import MISSING, metrics_table

LEGEND = (
    "Accuracy and teacher agreement are measured on the test split, in percent; "
    "latency is milliseconds per batch of 256; "
    f"{MISSING} means the metric was not measured for that model."
)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/plots/*.png``) and return the report's path.

    Every file is written to a temporary file and moved into place with ``os.replace``, so an
    interrupted call leaves the previous report intact rather than half a new one.

    Raises:
        ReportError: ``run_dir`` is not a run directory, or its ``config.yaml`` or
            ``metrics.json`` is missing or unreadable (the message names the fix).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(
            f"{run_dir} is not a directory: pass the run directory written by `anydistill run`, e.g. runs/<name>"
        )
    config_text, config = _read_config(run_dir)
    metrics = _read_metrics(run_dir)
    run_info, run_info_problem = _read_run_info(run_dir)

    figures = _write_plots(run_dir, metrics)
    name = config.get("name") if isinstance(config.get("name"), str) else run_dir.name
    text = render_report(
        name=name,
        metrics=metrics,
        figures=figures,
        config_text=config_text,
        run_info=run_info,
        run_info_problem=run_info_problem,
        seed=config.get("seed"),
    )
    out = run_dir / "report.md"
    _write_text_atomic(out, text)
    return out


# --- reading the run directory ------------------------------------------------------------------


def _read_config(run_dir: Path) -> tuple[str, dict]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ReportError(
            f"{run_dir} has no config.yaml: it is not a run directory written by `anydistill run` "
            "(expected config.yaml and metrics.json); pass the run's own directory, e.g. runs/<name>"
        )
    try:
        text = path.read_text(encoding="utf-8")
        config = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ReportError(
            f"{path} is not valid YAML ({_one_line(err)}): restore it, or rerun the recipe with `anydistill run`"
        ) from err
    if not isinstance(config, dict):
        raise ReportError(
            f"{path} must hold a YAML mapping (the resolved recipe); got {type(config).__name__}: "
            "restore it, or rerun the recipe with `anydistill run`"
        )
    return text, config


def _read_metrics(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "metrics.json"
    resume = f"resume it with `anydistill run --resume {run_dir}`"
    if not path.is_file():
        raise ReportError(f"{run_dir} has no metrics.json: the run did not finish; {resume}")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(
            f"{path} is corrupt ({_one_line(err)}): the run was interrupted while writing it; "
            f"delete it and {resume}"
        ) from err
    if not isinstance(metrics, dict) or not all(isinstance(entry, dict) for entry in metrics.values()):
        raise ReportError(
            f"{path} must map model labels to metric objects, e.g. {{\"kd\": {{\"accuracy\": 0.97}}}}; "
            f"delete it and {resume}"
        )
    if not metrics:
        raise ReportError(f"{path} lists no models: the run did not finish evaluating; {resume}")
    return metrics


def _read_run_info(run_dir: Path) -> tuple[dict, str | None]:
    """Return ``(run.json content, problem)``; run.json is optional, so problems are reported, not raised."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}, "run.json is missing: versions and command were not recorded for this run."
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return {}, f"run.json could not be read ({_one_line(err)})."
    if not isinstance(info, dict):
        return {}, f"run.json should be a JSON object; got {type(info).__name__}."
    return info, None


def _find_log_csvs(run_dir: Path, metrics: Mapping[str, dict]) -> dict[str, Path]:
    """Map label -> ``logs/<label>/metrics.csv``, labels in metrics order first, then the rest."""
    found = {path.parent.name: path for path in sorted((run_dir / "logs").glob("*/metrics.csv"))}
    ordered = {label: found[label] for label in metrics if label in found}
    ordered.update((label, path) for label, path in found.items() if label not in ordered)
    return ordered


# --- plots --------------------------------------------------------------------------------------


def run_figures(run_dir: Path, metrics: Mapping[str, dict] | None = None) -> dict[str, tuple[str, Figure | None]]:
    """The report's figures of a run, by caption: ``(PNG file name, figure or None when it has no data)``."""
    metrics = _read_metrics(run_dir) if metrics is None else metrics
    log_csvs = _find_log_csvs(run_dir, metrics)
    # One colour per model across all figures, assigned in table order.
    colors = label_colors([*metrics, *(label for label in log_csvs if label not in metrics)])
    try:
        return {"Learning curves": ("learning_curves.png", learning_curves_figure(log_csvs, colors)),
                "Accuracy vs. model size": ("accuracy_vs_params.png", accuracy_vs_params_figure(metrics, colors))}
    except LogReadError as err:  # its message names the file
        raise ReportError(f"{_one_line(err)}: delete that file to report without its curves") from err


def _write_plots(run_dir: Path, metrics: Mapping[str, dict]) -> list[tuple[str, str]]:
    """Write the PNGs and return ``(caption, relative path)`` for those that had data."""
    figures = []
    for caption, (filename, figure) in run_figures(run_dir, metrics).items():
        path = run_dir / "plots" / filename
        written = save_figure(figure, path) if figure is not None else None
        if written is None:
            # An image from an earlier report would otherwise sit beside a report that no longer shows it.
            path.unlink(missing_ok=True)
        else:
            figures.append((caption, written.relative_to(run_dir).as_posix()))
    return figures


# --- rendering ----------------------------------------------------------------------------------


# Text a model generated (the LM evaluator's greedy and sampled continuations), shown verbatim.
GENERATION_KEYS = ("greedy", "sample")


def render_report(
    *,
    name: str,
    metrics: Mapping[str, Mapping[str, object]],
    figures: list[tuple[str, str]],
    config_text: str,
    run_info: Mapping[str, object],
    run_info_problem: str | None,
    seed: object = None,
) -> str:
    """Assemble the Markdown text of a report from already-read parts."""
    lines = [f"# Run report: {name}", "", "## Metrics", "", LEGEND, "", metrics_table(metrics), ""]

    generations = [(label, key, entry[key]) for label, entry in metrics.items() for key in GENERATION_KEYS
                   if isinstance(entry.get(key), str)]
    if generations:
        lines += ["## Generations", ""]
        for label, key, text in generations:
            fence = _fence(text)
            lines += [f"**{_cell(label)}**, {key}:", "", fence, text.rstrip("\n"), fence, ""]

    if figures:
        lines += ["## Plots", ""]
        for caption, rel_path in figures:
            lines += [f"![{caption}]({rel_path})", ""]

    lines += ["## Run", ""]
    if run_info_problem:
        lines += [f"_{run_info_problem}_", ""]
    # run.json records the seed actually used; the recipe's seed is the fallback.
    run_seed = run_info.get("seed", seed)
    facts = [
        ("seed", MISSING if run_seed is None else _code(str(run_seed))),
        ("world size", _code(str(run_info["world_size"])) if "world_size" in run_info else MISSING),
        ("command", _code(str(run_info["command"])) if "command" in run_info else MISSING),
    ]
    lines += [f"- {key}: {value}" for key, value in facts] + [""]

    versions = run_info.get("versions")
    if isinstance(versions, Mapping) and versions:
        lines += ["## Versions", "", "| package | version |", "| :--- | :--- |"]
        lines += [f"| {_cell(package)} | {_cell(version)} |" for package, version in versions.items()]
        lines += [""]

    fence = _fence(config_text)
    lines += ["## Resolved config", "", f"{fence}yaml", config_text.rstrip("\n"), fence, ""]
    return "\n".join(lines)


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _fence(text: str) -> str:
    # A fence longer than any backtick run inside the text, so a value holding ``` cannot end it.
    return "`" * max(3, _longest_backtick_run(text) + 1)


def _code(text: str) -> str:
    """Inline code span that survives backticks inside ``text``."""
    ticks = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _write_text_atomic(path: Path, text: str) -> None:
    # Same directory as the target so os.replace is an atomic rename; a plain open (not mkstemp)
    # so the report gets the usual umask permissions instead of owner-only 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
