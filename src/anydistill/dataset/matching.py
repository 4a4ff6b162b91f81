r"""Matching objectives of dataset distillation: gradients (DC/DSA), embeddings (DM), trajectories (MTT).

Pure functions of tensors. They need no model and no data: the caller computes the two sides
(network gradients on a real and on a synthetic batch of one class, embeddings of both, or the
student's unrolled parameters and two expert snapshots) and the function compares them. Each one
mirrors the official code's arithmetic, reductions and epsilons, checked against
VICO-UoE/DatasetCondensation (``utils.py``: ``distance_wb``, ``match_loss``; ``main_DM.py``) and
GeorgeCazenavette/mtt-distillation (``distill.py``).

Conventions:

* The real / expert side is a *target*: it is detached, as the official code does
  (``gw_real = [g.detach().clone() ...]``, ``embed(img_real).detach()``, buffer snapshots), so no
  gradient reaches it even if the caller forgot. Gradients flow into the synthetic side only.
* The arithmetic is done in at least fp32: bf16/fp16 inputs are upcast (fp64 stays fp64).
* Every function returns a 0-D tensor. Per-class sums (DC, DSA, DM sum the loss over classes) are
  the caller's loop, as in the official scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

GradientMetric = Literal["ours", "mse", "cos"]
_METRICS = ("ours", "mse", "cos")

# The official code adds this to the product of the two norms in every cosine ('ours' and 'cos').
_COS_EPS = 1e-6


def layer_distance(g_syn: Tensor, g_real: Tensor) -> Tensor:
    r"""DC's layer-wise gradient distance ('ours'; Zhao, Mopuri & Bilen, ICLR 2021, Eq. 10).

    .. math::

        d(\mathbf{A}, \mathbf{B}) = \sum_{i=1}^{\mathrm{out}}
            \left(1 - \frac{\mathbf{A}_{i\cdot} \cdot \mathbf{B}_{i\cdot}}
                           {\|\mathbf{A}_{i\cdot}\| \, \|\mathbf{B}_{i\cdot}\| + 10^{-6}}\right)

    where row :math:`i` is the gradient of everything feeding output node :math:`i`: the tensor is
    reshaped to ``[out, -1]`` first. By shape, exactly as the official ``distance_wb``:

    * 4-D ``[out, in, kh, kw]`` (conv weight): ``[out, in * kh * kw]``;
    * 3-D ``[C, h, w]`` (layer-norm weight): ``[C, h * w]``;
    * 2-D ``[out, in]`` (linear weight): used as is;
    * 1-D ``[C]`` (biases, batch/instance/group-norm scales and shifts): **skipped, the distance
      is 0** (a constant, no gradient), so in a ConvNet only conv and linear weights are matched.

    The :math:`10^{-6}` is added to the product of the norms (not clamped), so an all-zero row
    contributes exactly 1 (with a large gradient, :math:`-\mathbf{B}_{i\cdot} / 10^{-6}`, as
    officially) and identical gradients give :math:`\sum_i 10^{-6} / (\|\mathbf{A}_{i\cdot}\|^2 +
    10^{-6})`, a tiny positive value, not exactly 0.
    Each row's term is invariant to rescaling either row by a positive factor (up to that epsilon).

    Deviations, for shapes the official ConvNets never produce: a 0-D tensor is skipped like a 1-D
    one; a tensor of 5 or more dims is reshaped to ``[out, -1]`` as well (the official code would
    take cosines along the last axis only).

    Args:
        g_syn: gradient on the synthetic batch, any shape; gradients flow into it.
        g_real: gradient on the real batch, same shape; detached.

    Returns:
        0-D tensor, the sum over output nodes; fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: the shapes differ.
    """
    if g_syn.shape != g_real.shape:
        raise ValueError(
            f"layer_distance needs gradients of the same shape. Got {tuple(g_syn.shape)} (synthetic) and "
            f"{tuple(g_real.shape)} (real)."
        )
    g_syn, g_real = _upcast(g_syn), _upcast(g_real.detach())
    if g_syn.dim() <= 1:
        # Official: biases and norm parameters are not matched ("return torch.tensor(0)").
        return g_syn.new_zeros(())
    g_syn, g_real = g_syn.reshape(g_syn.shape[0], -1), g_real.reshape(g_real.shape[0], -1)
    cos = (g_syn * g_real).sum(-1) / (
        torch.linalg.vector_norm(g_syn, dim=-1) * torch.linalg.vector_norm(g_real, dim=-1) + _COS_EPS
    )
    return (1 - cos).sum()


def gradient_matching_distance(
    grads_syn: Sequence[Tensor], grads_real: Sequence[Tensor], metric: GradientMetric = "ours"
) -> Tensor:
    r"""Distance between two lists of parameter gradients, the official ``match_loss`` (DC / DSA).

    ``grads_syn[l]`` and ``grads_real[l]`` are the gradients of the cross-entropy of one class's
    synthetic and real batch with respect to the same parameter ``l`` of the same network (e.g.
    ``torch.autograd.grad(loss_syn, params, create_graph=True)`` and
    ``torch.autograd.grad(loss_real, params)``); DC's outer objective sums this over classes
    (and over the outer-loop steps): :math:`\sum_c D(\nabla_\theta \mathcal{L}^{S_c}, \nabla_\theta \mathcal{L}^{T_c})`.

    * ``'ours'`` (the papers' default): :math:`\sum_l d(\mathbf{G}^S_l, \mathbf{G}^T_l)`, the sum of
      `layer_distance` over layers (1-D parameters contribute 0).
    * ``'mse'``: with every gradient flattened and concatenated into one vector :math:`g`,
      :math:`\sum_j (g^S_j - g^T_j)^2`. Note: a *sum* of squares, not a mean, as in the official code.
    * ``'cos'``: on the same concatenated vectors,
      :math:`1 - g^S \cdot g^T / (\|g^S\| \, \|g^T\| + 10^{-6})` (all layers at once, biases included).

    Args:
        grads_syn: one tensor per parameter; gradients flow into them.
        grads_real: the same number of tensors with the same shapes, in the same order; detached.
        metric: ``'ours'``, ``'mse'`` or ``'cos'``.

    Returns:
        0-D tensor; fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: unknown metric, empty or unequal-length lists, or mismatched shapes (every
            problem is listed).
    """
    problems = []
    if metric not in _METRICS:
        problems.append(
            f"The 'metric' parameter of gradient_matching_distance must be one of "
            f"{', '.join(map(repr, _METRICS))}. Got {metric!r}."
        )
    if len(grads_syn) != len(grads_real) or not grads_syn:
        problems.append(
            "gradient_matching_distance needs two non-empty lists of gradients of the same length. "
            f"Got {len(grads_syn)} (synthetic) and {len(grads_real)} (real)."
        )
    else:
        problems += [
            f"Gradient {i} has shape {tuple(s.shape)} (synthetic) but {tuple(r.shape)} (real)."
            for i, (s, r) in enumerate(zip(grads_syn, grads_real))
            if s.shape != r.shape
        ]
    if problems:
        raise ValueError("\n".join(problems))

    if metric == "ours":
        distances = [layer_distance(s, r) for s, r in zip(grads_syn, grads_real)]
        return torch.stack(distances).sum()
    g_syn = torch.cat([_upcast(s).reshape(-1) for s in grads_syn])
    g_real = torch.cat([_upcast(r.detach()).reshape(-1) for r in grads_real])
    if metric == "mse":
        return ((g_syn - g_real) ** 2).sum()
    return 1 - (g_syn * g_real).sum() / (
        torch.linalg.vector_norm(g_syn) * torch.linalg.vector_norm(g_real) + _COS_EPS
    )


def distribution_matching_loss(embed_real: Tensor, embed_syn: Tensor) -> Tensor:
    r"""DM's loss for one class (Zhao & Bilen, WACV 2023): the linear-kernel empirical MMD of its Sec. 3.

    .. math::

        \mathcal{L}_c = \Big\| \frac{1}{N} \sum_{n=1}^{N} \psi_\vartheta(\mathcal{A}(x^T_n))
            - \frac{1}{M} \sum_{m=1}^{M} \psi_\vartheta(\mathcal{A}(s_m)) \Big\|^2

    the squared Euclidean distance between the mean embeddings, summed over features, not averaged
    (official ``main_DM.py``: ``torch.sum((torch.mean(output_real, dim=0) -
    torch.mean(output_syn, dim=0))**2)``). The caller sums over classes, with a freshly sampled
    embedder :math:`\psi_\vartheta` (e.g. ``ConvNet.embed``) each iteration and the same DSA
    transformation :math:`\mathcal{A}` on both batches.

    Args:
        embed_real: ``[N, F]`` embeddings of one class's real batch; detached.
        embed_syn: ``[M, F]`` embeddings of the same class's synthetic images; gradients flow into it.
            Any trailing shape ``[..., *]`` works as long as both sides agree; it is summed over.

    Returns:
        0-D tensor; fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: a side is not at least 2-D, is empty, or the feature shapes differ.
    """
    if (
        embed_real.dim() < 2
        or embed_real.shape[1:] != embed_syn.shape[1:]
        or embed_real.shape[0] == 0
        or embed_syn.shape[0] == 0
    ):
        raise ValueError(
            "distribution_matching_loss needs non-empty embeddings [N, F] (real) and [M, F] (synthetic) with the "
            f"same F. Got {tuple(embed_real.shape)} and {tuple(embed_syn.shape)}."
        )
    mean_real = _upcast(embed_real.detach()).mean(0)
    mean_syn = _upcast(embed_syn).mean(0)
    return ((mean_real - mean_syn) ** 2).sum()


def trajectory_matching_loss(student_params_end: Tensor, expert_start: Tensor, expert_end: Tensor) -> Tensor:
    r"""MTT's normalised parameter-matching loss (Cazenavette et al., CVPR 2022, Eq. 2).

    .. math::

        \mathcal{L} = \frac{\|\hat\theta_{t+N} - \theta^*_{t+M}\|_2^2}{\|\theta^*_t - \theta^*_{t+M}\|_2^2}

    :math:`\hat\theta_{t+N}` is the student after :math:`N` SGD steps on the synthetic set starting
    from the expert's snapshot :math:`\theta^*_t`; :math:`\theta^*_{t+M}` is the expert :math:`M`
    epochs later. So the loss is 0 when the student lands on the expert's end point and 1 when it
    stays at the start.

    Both norms are totals over all parameters (official ``distill.py``: ``mse_loss(...,
    reduction="sum")`` for each, both then divided by the parameter count :math:`P`, which cancels
    in the ratio; it is divided here too, to follow the same floating-point path). No epsilon: an
    expert that did not move (``expert_start == expert_end``) gives ``inf`` or ``nan``, as officially.

    Args:
        student_params_end: ``[P]`` flat student parameters after the unrolled steps (e.g. from
            ``flat_parameters``-ordered vectors updated functionally); gradients flow into it, and
            through it to the synthetic images and learning rate.
        expert_start: ``[P]`` expert snapshot at epoch :math:`t`, same layout; detached.
        expert_end: ``[P]`` expert snapshot at epoch :math:`t + M`; detached.

    Returns:
        0-D tensor; fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: the three tensors are not 1-D of the same non-zero length.
    """
    shapes = [tuple(t.shape) for t in (student_params_end, expert_start, expert_end)]
    if any(len(s) != 1 for s in shapes) or len(set(shapes)) != 1 or shapes[0][0] == 0:
        raise ValueError(
            "trajectory_matching_loss needs three flat parameter vectors [P] of the same non-zero length "
            f"(student end, expert start, expert end). Got {shapes[0]}, {shapes[1]} and {shapes[2]}."
        )
    num_params = shapes[0][0]
    theta_hat = _upcast(student_params_end)
    theta_start, theta_target = _upcast(expert_start.detach()), _upcast(expert_end.detach())
    param_loss = ((theta_hat - theta_target) ** 2).sum() / num_params
    param_dist = ((theta_start - theta_target) ** 2).sum() / num_params
    return param_loss / param_dist


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
