"""A child's peak-memory figure is its own: it does not grow with its parent's size (issue 25 §0)."""

import subprocess
import sys

import pytest

from anydistill.core.memory import STATUS, peak_rss_mib, status_kib

pytestmark = pytest.mark.skipif(not STATUS.exists(), reason="needs Linux /proc")

CHILD = "from anydistill.core.memory import peak_rss_mib; print(peak_rss_mib())"


def child_peak() -> float:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=120)
    return float(done.stdout.strip().splitlines()[-1])


def test_child_peak_does_not_depend_on_the_parents_size():
    small = child_peak()
    ballast = bytearray(b"\x01") * (400 << 20)  # 400 MiB of touched pages in the parent
    assert peak_rss_mib() >= 400
    large = child_peak()
    del ballast
    assert large < 200, f"a child of a 400 MiB parent reads {large:.0f} MiB: the parent's peak leaked into the figure"
    assert abs(large - small) < 50


def test_peak_is_at_least_the_current_resident_set():
    assert status_kib("VmHWM") >= status_kib("VmRSS") > 0


def test_unknown_field_is_a_clear_error():
    with pytest.raises(RuntimeError, match="NoSuchField"):
        status_kib("NoSuchField")
