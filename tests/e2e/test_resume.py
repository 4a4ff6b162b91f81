"""kill -9 in the middle of training, then `--resume`: the final weights equal an uninterrupted run's.

The teacher is the seeded, untrained `small-cnn`: what matters here is that every bit of state
(weights, optimizer, schedule, data order, RNG) survives the interruption."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import torch
from safetensors.torch import load_file

from e2e.helpers import ANYDISTILL, anydistill, quiet_env

RECIPE = """\
name: resume
seed: 5
data: {name: digits, batch_size: 16}
teacher: {name: small-cnn, channels: [8, 16], hidden: 32}
student: {name: mlp, hidden: [32]}
trainer: {max_epochs: 12, progress_bar: false}
optimizer: {name: adam, lr: 0.002}
methods:
  kd: {temperature: 2.0, alpha: 0.8}
"""


def test_kill_and_resume_reproduces_the_uninterrupted_weights(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text(RECIPE)
    reference = anydistill("run", "r.yaml", "--name", "whole", cwd=tmp_path, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    run = tmp_path / "runs" / "cut"
    process = subprocess.Popen([*ANYDISTILL, "run", "r.yaml", "--name", "cut"], cwd=tmp_path, env=quiet_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Wait until the kd method has finished at least 3 epochs (an epoch>=3 checkpoint exists), then kill.
    while not any(int(p.stem.split("=")[1]) >= 3 for p in (run / "checkpoints" / "kd").glob("epoch=*.ckpt")):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "the run never reached epoch 3"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (run / "checkpoints" / "kd" / "model.safetensors").exists(), "killed too late: kd had finished"

    resumed = anydistill("run", "--resume", str(run), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    # The learning curve survives the interruption: every epoch has its training loss once.
    with (run / "logs" / "kd" / "metrics.csv").open() as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle) if row.get("train/loss_epoch")]
    assert epochs == list(range(12))

    whole = load_file(str(tmp_path / "runs" / "whole" / "checkpoints" / "kd" / "model.safetensors"))
    cut = load_file(str(run / "checkpoints" / "kd" / "model.safetensors"))
    assert whole.keys() == cut.keys()
    for key in whole:
        assert torch.equal(whole[key], cut[key]), f"{key} differs after kill -9 and resume"
