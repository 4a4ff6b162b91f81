"""DKD's warm-up follows the paper's share of the schedule (mdistiller: 20 of 240 epochs)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from anydistill.classifier.methods.dkd import DKD


def weight(method: DKD, step: int, total: int, epoch: int = 0) -> float:
    method._trainer = SimpleNamespace(estimated_stepping_batches=total, global_step=step, current_epoch=epoch)
    return method.warmup_weight()


def test_default_ramps_over_a_twelfth_of_the_steps() -> None:
    dkd = DKD(nn.Linear(2, 2))
    assert weight(dkd, 0, 2400) == pytest.approx(1 / 200)  # 200 warm-up steps of 2,400
    assert weight(dkd, 99, 2400) == pytest.approx(0.5)
    assert weight(dkd, 199, 2400) == 1.0 and weight(dkd, 2000, 2400) == 1.0


def test_warmup_epochs_keeps_mdistillers_per_epoch_form() -> None:
    dkd = DKD(nn.Linear(2, 2), warmup_epochs=20)
    assert weight(dkd, 10_000, 100, epoch=0) == pytest.approx(1 / 20)
    assert weight(dkd, 10_000, 100, epoch=19) == 1.0


def test_zero_warmup_is_full_weight_from_the_first_step() -> None:
    assert weight(DKD(nn.Linear(2, 2), warmup=0.0), 0, 1000) == 1.0
