"""Running the real `anydistill` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ANYDISTILL = [sys.executable, "-m", "anydistill.cli"]


def quiet_env() -> dict[str, str]:
    """The environment for child runs: two threads, no colour codes, no network."""
    return {**os.environ, "OMP_NUM_THREADS": "2", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def anydistill(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``anydistill ARGS`` in ``cwd`` and capture its output."""
    return subprocess.run([*ANYDISTILL, *args], cwd=cwd, env=quiet_env(), capture_output=True, text=True, timeout=timeout)


TINY_RECIPE = """\
# A tiny recipe for end-to-end tests.
name: tiny
seed: 3
data: {name: digits, batch_size: 32, train_limit: 256}
teacher: {name: small-cnn, channels: [8, 16], hidden: 32}
student: {name: mlp, hidden: [16]}
trainer: {max_epochs: 2, progress_bar: false}
optimizer: {name: adam, lr: 0.003}
methods:
  teacher: {}
  scratch: {}
  kd: {temperature: 2.0, alpha: 0.7}
"""
