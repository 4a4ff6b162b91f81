"""Two processes on CPU (gloo, torchrun) distil a language model like one process with the doubled
batch: the global token count and the rank sharding of the Shakespeare data hold under DDP."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from e2e.helpers import anydistill, quiet_env

RECIPE = """\
name: lm-ddp
seed: 7
data: {name: shakespeare, block_size: 32, prompt_tokens: 8, batch_size: 8, train_limit: 64, eval_limit: 8}
teacher: {name: gpt2-lm, vocab_size: 96, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 32}
student: {name: gpt2-lm, vocab_size: 96, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 32}
trainer: {max_epochs: 1, progress_bar: false}
optimizer: {name: sgd, lr: 0.5, momentum: 0.0, schedule: constant}
evaluation: {generate_tokens: 4}
methods:
  lm-kd: {divergence: jsd, beta: 0.5, alpha: 0.7, fused_head: true}   # the fused LM-head loss under DDP too
"""


def test_two_process_ddp_matches_one_process(tmp_path) -> None:
    (tmp_path / "ddp.yaml").write_text(RECIPE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "anydistill.cli", "run", "ddp.yaml", "--name", "two",
                "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp", "--set", "data.batch_size=4"]
    two = subprocess.run(torchrun, cwd=tmp_path, env=quiet_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = anydistill("run", "ddp.yaml", "--name", "one", cwd=tmp_path, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    assert json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())["lm-kd"]["world_size"] == 2
    a = load_file(str(tmp_path / "runs" / "two" / "checkpoints" / "lm-kd" / "model.safetensors"))
    b = load_file(str(tmp_path / "runs" / "one" / "checkpoints" / "lm-kd" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs between DDP and one process")
