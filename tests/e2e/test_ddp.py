"""Two processes on CPU (gloo, launched by torchrun) train the same model as one process with the
doubled batch, within floating-point tolerance."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from e2e.helpers import anydistill, quiet_env

RECIPE = """\
name: ddp
seed: 7
data: {name: digits, batch_size: 32, train_limit: 512}
teacher: {name: small-cnn, channels: [8, 16], hidden: 32}
student: {name: mlp, hidden: [32]}
trainer: {max_epochs: 2, progress_bar: false}
optimizer: {name: sgd, lr: 0.05, schedule: constant}
methods:
  kd: {temperature: 2.0, alpha: 0.8}
"""


def test_two_process_ddp_matches_one_process(tmp_path) -> None:
    (tmp_path / "ddp.yaml").write_text(RECIPE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "anydistill.cli", "run", "ddp.yaml", "--name", "two",
                "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp", "--set", "data.batch_size=16"]
    two = subprocess.run(torchrun, cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = anydistill("run", "ddp.yaml", "--name", "one", cwd=tmp_path, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    metrics_two = json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())
    metrics_one = json.loads((tmp_path / "runs" / "one" / "metrics.json").read_text())
    assert metrics_two["kd"]["world_size"] == 2
    assert metrics_one["kd"]["world_size"] == 1

    # Rank r sees rows r, r+2, ... of each 32-row window: together, the one-process batch.
    a = load_file(str(tmp_path / "runs" / "two" / "checkpoints" / "kd" / "model.safetensors"))
    b = load_file(str(tmp_path / "runs" / "one" / "checkpoints" / "kd" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs between DDP and one process")
