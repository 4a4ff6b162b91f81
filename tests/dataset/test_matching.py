"""Matching objectives of dataset distillation (DC/DSA gradients, DM embeddings, MTT trajectories)."""

import math

import pytest
import torch
import torch.nn.functional as F

from anydistill.dataset.convnet import convnet, flat_parameters, functional_forward, unflatten
from anydistill.dataset.matching import (
    distribution_matching_loss,
    gradient_matching_distance,
    layer_distance,
    trajectory_matching_loss,
)

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Two output nodes, two inputs each:
#   node 0: syn (1, 0), real (1, 1):  cos = 1 / sqrt(2)        -> 1 - 0.7071068 = 0.2928932
#   node 1: syn (0, 2), real (0, -3): cos = -6 / (2 * 3) = -1  -> 1 - (-1)      = 2
#   total 2.2928932 (the 1e-6 added to the norms' product shifts it by < 1e-6)
SYN = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
REAL = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
HAND = (1 - 1 / math.sqrt(2)) + 2.0


def test_layer_distance_by_hand_for_linear_conv_and_layernorm_shapes():
    assert layer_distance(SYN, REAL).item() == pytest.approx(HAND, abs=1e-5)  # linear [out, in]
    # conv [out, in, kh, kw] = [2, 1, 1, 2] and layer-norm [C, h, w] = [2, 1, 2]: rows are the same.
    assert layer_distance(SYN.view(2, 1, 1, 2), REAL.view(2, 1, 1, 2)).item() == pytest.approx(HAND, abs=1e-5)
    assert layer_distance(SYN.view(2, 1, 2), REAL.view(2, 1, 2)).item() == pytest.approx(HAND, abs=1e-5)
    # A conv row holds in*kh*kw values: [1, 2, 3, 3] -> rows of 2*3*3 = 18, compared as a whole.
    g_syn, g_real = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    expected = 1 - F.cosine_similarity(g_syn.reshape(1, -1), g_real.reshape(1, -1), eps=0).sum()
    assert layer_distance(g_syn, g_real).item() == pytest.approx(expected.item(), abs=1e-5)


def test_layer_distance_skips_one_dimensional_tensors_like_the_official_code():
    # Biases and norm parameters: distance_wb returns a constant 0, however different they are.
    g_syn = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    out = layer_distance(g_syn, torch.tensor([-5.0, 0.0, 1.0]))
    assert out.shape == () and out.item() == 0.0 and not out.requires_grad
    assert layer_distance(torch.tensor(2.0), torch.tensor(-1.0)).item() == 0.0


def test_layer_distance_zero_for_identical_and_scale_invariant_per_output_node():
    g = torch.randn(4, 3, 3, 3)
    assert layer_distance(g, g.clone()).item() == pytest.approx(0.0, abs=1e-5)
    # Rescaling each output node's row by its own positive factor changes nothing (up to the 1e-6).
    scale = torch.tensor([0.5, 2.0, 10.0, 3.0]).view(4, 1, 1, 1)
    g_real = torch.randn(4, 3, 3, 3)
    base = layer_distance(g, g_real)
    assert layer_distance(g * scale, g_real).item() == pytest.approx(base.item(), abs=1e-5)
    assert layer_distance(g, g_real * scale).item() == pytest.approx(base.item(), abs=1e-5)
    # An all-zero row contributes exactly 1 (epsilon added, not clamped).
    assert layer_distance(torch.zeros(3, 2), torch.randn(3, 2)).item() == pytest.approx(3.0)


def test_gradient_matching_distance_ours_sums_layers():
    shapes = [(4, 1, 3, 3), (4,), (4,), (4,), (3, 16), (3,)]  # conv w, conv b, norm w, norm b, fc w, fc b
    grads_syn = [torch.randn(s) for s in shapes]
    grads_real = [torch.randn(s) for s in shapes]
    total = gradient_matching_distance(grads_syn, grads_real)  # default metric 'ours'
    by_layer = sum(layer_distance(s, r) for s, r in zip(grads_syn, grads_real))
    assert total.shape == () and total.item() == pytest.approx(by_layer.item(), abs=1e-6)
    # Only the conv and linear weights count: the 1-D tensors contribute 0.
    weights_only = layer_distance(grads_syn[0], grads_real[0]) + layer_distance(grads_syn[4], grads_real[4])
    assert total.item() == pytest.approx(weights_only.item(), abs=1e-6)
    assert gradient_matching_distance([SYN, torch.ones(3)], [REAL, -torch.ones(3)]).item() == pytest.approx(
        HAND, abs=1e-5
    )


def test_gradient_matching_distance_mse_and_cos_on_concatenated_vectors():
    # Concatenated: syn (1, 0, 0, 2, 1, 1, 1), real (1, 1, 0, -3, -1, -1, -1).
    grads_syn, grads_real = [SYN, torch.ones(3)], [REAL, -torch.ones(3)]
    # mse is a SUM of squares: 0 + 1 + 0 + 25 + 4 + 4 + 4 = 38.
    assert gradient_matching_distance(grads_syn, grads_real, "mse").item() == pytest.approx(38.0)
    # cos: dot = 1 - 6 - 3 = -8; |syn| = sqrt(1 + 4 + 3) = sqrt(8); |real| = sqrt(1 + 1 + 9 + 3) = sqrt(14);
    # 1 - (-8) / sqrt(112) = 1.7559289.
    assert gradient_matching_distance(grads_syn, grads_real, "cos").item() == pytest.approx(
        1 + 8 / math.sqrt(112), abs=1e-5
    )
    grads = [torch.randn(4, 3), torch.randn(4)]
    same = [g.clone() for g in grads]
    assert gradient_matching_distance(grads, same, "mse").item() == 0.0
    assert gradient_matching_distance(grads, same, "cos").item() == pytest.approx(0.0, abs=1e-5)
    # 'ours' on identical gradients is not exactly 0: the official 1e-6 added to |g_i|^2 leaves
    # 1 - |g_i|^2 / (|g_i|^2 + 1e-6) = 1e-6 / (|g_i|^2 + 1e-6) per row (noticeable for tiny rows only).
    residue = sum(1e-6 / (row.norm() ** 2 + 1e-6) for row in grads[0])
    assert gradient_matching_distance(grads, same, "ours").item() == pytest.approx(residue.item(), abs=1e-6)


def test_gradient_matching_distance_reports_every_problem():
    with pytest.raises(ValueError, match=r"(?s)'metric' .* 'ours', 'mse', 'cos'. Got 'l2'.*same length"):
        gradient_matching_distance([torch.ones(2)], [], "l2")
    with pytest.raises(ValueError, match=r"(?s)Gradient 0 has shape \(2,\).*\(3,\).*Gradient 1"):
        gradient_matching_distance([torch.ones(2), torch.ones(2, 2)], [torch.ones(3), torch.ones(2, 3)])
    with pytest.raises(ValueError, match="same shape"):
        layer_distance(torch.ones(2, 2), torch.ones(2, 3))


def test_distribution_matching_loss_by_hand():
    # mean real = ((1 + 3) / 2, (2 + 4) / 2) = (2, 3); mean syn = ((0 + 2) / 2, (1 - 1) / 2) = (1, 0);
    # squared distance, summed over features (not averaged): 1^2 + 3^2 = 10.
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    syn = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    assert distribution_matching_loss(real, syn).item() == pytest.approx(10.0)
    # Only the means matter: different counts and spreads with equal means give 0.
    assert distribution_matching_loss(real, torch.tensor([[2.0, 3.0]])).item() == 0.0
    assert distribution_matching_loss(real, torch.tensor([[0.0, 3.0], [4.0, 3.0], [2.0, 3.0]])).item() == 0.0
    with pytest.raises(ValueError, match="same F"):
        distribution_matching_loss(real, torch.ones(1, 3))


def test_trajectory_matching_loss_endpoints_and_by_hand():
    start, end = torch.tensor([0.0, 0.0]), torch.tensor([2.0, 2.0])  # ||start - end||^2 = 8
    assert trajectory_matching_loss(end.clone(), start, end).item() == 0.0
    assert trajectory_matching_loss(start.clone(), start, end).item() == pytest.approx(1.0)
    # Halfway: (1 + 1) / 8 = 0.25; student (1, 2): ((1 - 2)^2 + 0) / 8 = 0.125 (totals, not per-parameter).
    assert trajectory_matching_loss(torch.tensor([1.0, 1.0]), start, end).item() == pytest.approx(0.25)
    assert trajectory_matching_loss(torch.tensor([1.0, 2.0]), start, end).item() == pytest.approx(0.125)
    with pytest.raises(ValueError, match=r"\[P\] of the same non-zero length"):
        trajectory_matching_loss(torch.ones(3), start, end)


def _tiny_net():
    return convnet(1, 3, 8, width=4, depth=1)  # 1x8x8 -> conv(pad 3) 12x12 -> pool 6x6, 144 features


def test_gradient_matching_backpropagates_to_the_synthetic_images():
    net = _tiny_net()
    params = list(net.parameters())
    x_real, y_real = torch.randn(6, 1, 8, 8), torch.full((6,), 1)
    x_syn = torch.randn(2, 1, 8, 8, requires_grad=True)
    y_syn = torch.full((2,), 1)
    gw_real = torch.autograd.grad(F.cross_entropy(net(x_real), y_real), params)
    gw_syn = torch.autograd.grad(F.cross_entropy(net(x_syn), y_syn), params, create_graph=True)
    for metric in ("ours", "mse", "cos"):
        loss = gradient_matching_distance(gw_syn, gw_real, metric)
        (grad,) = torch.autograd.grad(loss, x_syn, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, metric


def test_real_side_is_a_detached_target():
    g_syn = torch.randn(3, 4, requires_grad=True)
    g_real = torch.randn(3, 4, requires_grad=True)
    for loss in (
        layer_distance(g_syn, g_real),
        gradient_matching_distance([g_syn], [g_real], "mse"),
        distribution_matching_loss(g_real, g_syn),
    ):
        syn_grad, real_grad = torch.autograd.grad(loss, (g_syn, g_real), allow_unused=True)
        assert syn_grad is not None and real_grad is None


def test_distribution_matching_backpropagates_to_the_synthetic_images():
    net = _tiny_net().requires_grad_(False)
    x_syn = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = distribution_matching_loss(net.embed(torch.randn(5, 1, 8, 8)), net.embed(x_syn))
    loss.backward()
    assert x_syn.grad is not None and x_syn.grad.abs().sum() > 0


def test_trajectory_matching_backpropagates_to_images_and_learning_rate():
    net = _tiny_net()
    expert_start = flat_parameters(net)
    expert_end = expert_start + 0.01 * torch.randn_like(expert_start)
    x_syn = torch.randn(3, 1, 8, 8, requires_grad=True)
    y_syn = torch.tensor([0, 1, 2])
    syn_lr = torch.tensor(0.01, requires_grad=True)
    theta = expert_start.clone().requires_grad_(True)
    for _ in range(2):  # two unrolled SGD steps on the synthetic set, as MTT's inner loop
        ce = F.cross_entropy(functional_forward(net, unflatten(net, theta), x_syn), y_syn)
        (grad,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - syn_lr * grad
    loss = trajectory_matching_loss(theta, expert_start, expert_end)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert x_syn.grad is not None and x_syn.grad.abs().sum() > 0
    assert syn_lr.grad is not None and syn_lr.grad != 0
