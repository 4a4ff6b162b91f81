"""Fréchet distance: the closed form in 1-D, scipy's matrix square root in D dimensions, and no
warning or NaN when the covariances are singular."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from anydistill.diffusion.digit_features import frechet_distance


def test_one_dimension_is_the_closed_form() -> None:
    a, b = torch.randn(500, 1, dtype=torch.float64), 3 + 2 * torch.randn(400, 1, dtype=torch.float64)
    mu_a, mu_b = a.mean(), b.mean()
    sd_a, sd_b = a.std(), b.std()  # unbiased, as np.cov
    expected = float((mu_a - mu_b) ** 2 + (sd_a - sd_b) ** 2)
    assert abs(frechet_distance(a, b) - expected) < 1e-9


def test_matches_scipy_sqrtm_on_well_conditioned_features() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=generator, dtype=torch.float64)
    b = torch.randn(300, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 6, generator=generator, dtype=torch.float64) + 1
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    expected = (((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real))
    assert abs(frechet_distance(a, b) - expected) < 1e-8 * max(1.0, abs(expected))
    assert abs(frechet_distance(a, a)) < 1e-9


def test_singular_covariances_give_a_finite_value_without_warnings() -> None:
    a = torch.zeros(50, 8)
    a[:, :2] = torch.randn(50, 2)  # six dead features: rank-2 covariance
    b = a.clone()
    b[:, 0] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = frechet_distance(a, b)
    assert np.isfinite(value) and abs(value - 1.0) < 1e-5
