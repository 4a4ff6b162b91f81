"""Linear centred kernel alignment (CKA) between two layers' representations of the same inputs."""

from __future__ import annotations

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
    Revisited", eq. 5) of ``x`` [N, D1] and ``y`` [N, D2], N examples in the same order:

        X, Y = column-centred x, y        (each feature minus its mean over the N examples)
        CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F)

    which equals HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)) with the linear kernels K = x xᵀ,
    L = y yᵀ and HSIC(K, L) = tr(K H L H) / (N - 1)², H = I - 11ᵀ/N. It lies in [0, 1], is 1 for
    representations equal up to an orthogonal transform and an isotropic scaling (invariant to
    both), and compares layers of different widths.

    Computed in float64, with the cheaper of the two equal forms: the D1 x D2 cross-covariance
    above when N >= the widths, else the N x N Gram matrices (||Yᵀ X||_F² = <X Xᵀ, Y Yᵀ>_F).
    A representation that is constant over the examples has no alignment: the result is NaN.

    Returns:
        a 0-dim float64 tensor.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka takes [N, D1] and [N, D2] features of the same N examples; got {tuple(x.shape)} and {tuple(y.shape)}.")
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        gram_x, gram_y = x @ x.T, y @ y.T
        cross, self_x, self_y = (gram_x * gram_y).sum(), gram_x.norm(), gram_y.norm()
    else:
        cross, self_x, self_y = (y.T @ x).square().sum(), (x.T @ x).norm(), (y.T @ y).norm()
    return cross / (self_x * self_y)
