"""Closed-form divergence gradients (lm.divergence_grad) equal autograd through the unfused formulas."""

from __future__ import annotations

import pytest
import torch

from anydistill.lm.divergence_grad import ce_and_grad, divergence_and_grad
from anydistill.lm.token_losses import chunk_ce_sum, per_token_divergence


@pytest.mark.parametrize(("divergence", "beta"), [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.0), ("jsd", 1.0)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_closed_form_matches_autograd(divergence, beta, temperature) -> None:
    generator = torch.Generator().manual_seed(0)
    z_s = (3 * torch.randn(9, 40, generator=generator, dtype=torch.float64)).requires_grad_()
    z_t = 3 * torch.randn(9, 40, generator=generator, dtype=torch.float64)
    reference = per_token_divergence(z_s, z_t, divergence=divergence, temperature=temperature, beta=beta, alpha=0.1)
    (expected,) = torch.autograd.grad(reference.sum(), z_s)
    value, grad = divergence_and_grad(z_s.detach(), z_t.clone(), divergence=divergence, temperature=temperature, beta=beta)
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    value_only, none = divergence_and_grad(z_s.detach(), z_t, divergence=divergence, temperature=temperature, beta=beta,
                                           need_grad=False)
    assert none is None and torch.equal(value_only, value)


def test_cross_entropy_closed_form_matches_autograd() -> None:
    generator = torch.Generator().manual_seed(1)
    z = (2 * torch.randn(6, 30, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(30, (6,), generator=generator)
    reference = chunk_ce_sum(z, targets)
    (expected,) = torch.autograd.grad(reference, z)
    value, grad = ce_and_grad(z.detach(), targets)
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_a_divergence_without_closed_form_is_refused() -> None:
    with pytest.raises(ValueError, match="no closed form for 'tvd'"):
        divergence_and_grad(torch.zeros(1, 3), torch.zeros(1, 3), divergence="tvd", temperature=1.0, beta=0.5)
