"""This process's own peak memory, for benchmarks that compare configurations run in child processes.

Why not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a child started by ``subprocess``
(fork/vfork + exec) inherits its parent's high-water mark in that field, so a parent holding 600 MB
starts a child whose ``ru_maxrss`` reads >= 600 MB whatever the child does. ``VmHWM`` in
``/proc/self/status`` is reset by exec and counts only the child's own pages.
"""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``: peak resident set; ``VmRSS``: current one).

    Raises:
        RuntimeError: not on Linux, or the kernel does not report the field.
    """
    try:
        text = STATUS.read_text()
    except OSError as error:
        raise RuntimeError(f"cannot read {STATUS} ({error}): peak memory of the process itself needs Linux's /proc") from None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in {STATUS}")


def peak_rss_mib() -> float:
    """This process's own peak resident set size in MiB (``VmHWM``), not inherited from a parent."""
    return status_kib("VmHWM") / 1024
