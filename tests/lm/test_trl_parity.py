"""Our generalized JSD against TRL's own `GKDTrainer.generalized_jsd_loss` (imported, not copied),
on [B, L, V] logits with -100 labels, for beta in {0, 0.5, 1}, to 1e-6."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
gkd_trainer = pytest.importorskip("trl.experimental.gkd.gkd_trainer")

from anydistill.lm.token_losses import normalize, token_distill_loss  # noqa: E402


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_matches_trl_gkd(beta: float) -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 7, 11, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(3, 7, 11, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, :3] = -100  # a prompt
    labels[2, 5:] = -100  # padding after <eos>
    mask = labels != -100

    expected = gkd_trainer.GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta)
    loss_sum, count = token_distill_loss(student, teacher, mask, divergence="jsd", beta=beta)
    assert count == int(mask.sum())
    torch.testing.assert_close(normalize(loss_sum, count), expected, rtol=0, atol=1e-6)

    # TRL's global-count path (num_items_in_batch, its fix of #4719) is our normalize with the same count.
    global_count = count + 5
    expected_global = gkd_trainer.GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, num_items_in_batch=global_count)
    torch.testing.assert_close(normalize(loss_sum, global_count), expected_global, rtol=0, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gradients_match_trl_gkd(beta: float) -> None:
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, 5, 9, generator=generator, dtype=torch.float64)
    ours = torch.randn(2, 5, 9, generator=generator, dtype=torch.float64, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_(True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    loss_sum, count = token_distill_loss(ours, teacher, mask, divergence="jsd", beta=beta)
    normalize(loss_sum, count).backward()
    # With labels TRL's "batchmean" divides by the number of kept tokens (without, by the batch size).
    labels = torch.zeros(2, 5, dtype=torch.long)
    gkd_trainer.GKDTrainer.generalized_jsd_loss(theirs, teacher, labels=labels, beta=beta).backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-6)
