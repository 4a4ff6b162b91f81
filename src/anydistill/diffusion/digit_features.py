"""A small digit classifier trained here (deterministically, cached in memory) whose penultimate
features score generated 8x8 digits: Fréchet distance, class accuracy of conditional samples.

Inception and LPIPS need downloaded weights; a local classifier is the offline substitute
(reference notes, section 3). Its test accuracy is reported in the evaluation card.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from anydistill.models.classifiers import SmallCNN

_CACHE: dict[str, tuple[nn.Module, float]] = {}


def train_small_cnn(x: Tensor, y: Tensor, channels: list[int], hidden: int, epochs: int, seed: int) -> nn.Module:
    """A `SmallCNN` classifier of images ``x`` [N, C, H, W] into labels ``y`` [N] (Adam 3e-3, batches
    of 64, seeded without touching the global RNG), frozen and in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(tuple(x.shape[1:]), int(y.max()) + 1, channels, hidden)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(epochs):
            for index in torch.randperm(x.shape[0]).split(64):
                loss = nn.functional.cross_entropy(net(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval().requires_grad_(False)


def digit_classifier(x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, key: str, epochs: int = 30) -> tuple[nn.Module, float]:
    """A `SmallCNN` (16, 32 channels, 64 features) trained on ``(x [N, 1, 8, 8], y [N])`` with a fixed
    seed, and its accuracy on the test split; cached under ``key`` (the data's fingerprint)."""
    if key in _CACHE:
        return _CACHE[key]
    net = train_small_cnn(x, y, [16, 32], 64, epochs, seed=0)
    with torch.no_grad():
        accuracy = float((net(x_test).argmax(-1) == y_test).float().mean())
    _CACHE[key] = (net, accuracy)
    return net, accuracy


@torch.no_grad()
def features_and_logits(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``([N, 64] penultimate features, [N, C] logits)`` of the classifier on images ``[N, 1, 8, 8]``."""
    h = net.classifier[:3](net.features(x.float().cpu()))
    return h, net.classifier[3](h)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    r"""``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` between Gaussians fitted to the
    feature sets ``a [N, D]`` and ``b [M, D]`` (Heusel et al. 2017, FID's formula).

    ``Tr((S_a S_b)^{1/2})`` is computed as the sum of the square roots of the eigenvalues of the
    symmetric ``S_a^{1/2} S_b S_a^{1/2}`` (same spectrum as ``S_a S_b``), so near-singular
    covariances (few samples, dead features) need no matrix square root of a non-symmetric product.
    """
    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = (np.atleast_2d(np.cov(x, rowvar=False)) for x in (a64, b64))  # [D, D], also for D = 1
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    trace_covmean = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_covmean)


def per_class_diversity(x: Tensor, y: Tensor) -> float:
    """Mean pairwise L2 distance between samples of the same class, averaged over the classes present
    (``x [N, ...]``, ``y [N]``); low values flag mode collapse within a class."""
    values = []
    for c in y.unique():
        members = x[y == c].flatten(1).double()
        if members.shape[0] > 1:
            d = torch.cdist(members, members)
            values.append(d.sum() / (members.shape[0] * (members.shape[0] - 1)))
    return float(torch.stack(values).mean()) if values else 0.0
