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


class FixedGenerations:
    """A stand-in model whose ``generate`` returns fixed sequences (ours reads a tensor, TRL a ModelOutput)."""

    training = False

    def __init__(self, sequences: torch.Tensor):
        self.sequences = sequences

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def generate(self, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(sequences=self.sequences) if kwargs.get("return_dict_in_generate") else self.sequences


def test_on_policy_completion_mask_matches_trl_gkd() -> None:
    """Both keep the first <eos> in the loss (the student must learn to stop) and drop what follows.
    trl < 1.x built the labels by masking every pad id, which with pad = eos dropped the <eos>
    itself; trl 1.16's `generate_on_policy_outputs` cuts after the first <eos> as we do."""
    from transformers import GenerationConfig

    from anydistill.lm.common import generate

    eos = pad = 0
    prompts = torch.tensor([[5, 6, 7], [8, 9, 5]])
    sequences = torch.tensor([[5, 6, 7, 3, eos, pad, pad], [8, 9, 5, 4, 4, 4, 4]])
    _, ours = generate(FixedGenerations(sequences), prompts, 4, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    _, _, labels = gkd_trainer.GKDTrainer.generate_on_policy_outputs(
        FixedGenerations(sequences), {"prompts": prompts, "prompt_attention_mask": torch.ones_like(prompts)},
        GenerationConfig(eos_token_id=eos, pad_token_id=pad))
    assert torch.equal(ours, labels != -100)
    assert ours[0].tolist() == [False, False, False, True, True, False, False]
