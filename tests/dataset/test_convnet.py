"""The ConvNet of the dataset-distillation protocol and its functional helpers."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anydistill.dataset.convnet import ConvNet, convnet, flat_parameters, functional_forward, unflatten


def test_mnist_shapes():
    # Official rule: single-channel images get padding 3 in the first conv, so 28 -> 32 -> 16 -> 8 -> 4.
    model = convnet(1, 10, 28)
    x = torch.randn(2, 1, 28, 28)
    assert model.feature_shape == (128, 4, 4)
    assert model(x).shape == (2, 10)
    assert model.embed(x).shape == (2, 128 * 4 * 4)
    assert model.features[0].padding == (3, 3) and model.features[4].padding == (1, 1)


def test_digits_shapes_and_depth_limit():
    # padding 3: 8 -> 12 -> 6 -> 3 -> 1 after 3 blocks; a 4th block would leave 0x0.
    model = convnet(1, 10, 8, width=16)
    assert model.feature_shape == (16, 1, 1)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert model.embed(torch.randn(3, 1, 8, 8)).shape == (3, 16)
    # padding 1: 8 -> 4 -> 2 -> 1.
    assert convnet(1, 10, 8, width=16, first_padding=1).feature_shape == (16, 1, 1)
    for first_padding in (None, 1):
        with pytest.raises(ValueError, match=r"depth 4 on 8x8 images .* use depth <= 3"):
            convnet(1, 10, 8, depth=4, first_padding=first_padding)


def test_rectangular_and_rgb_shapes():
    model = convnet(3, 7, (32, 16), width=8, depth=2, pooling="maxpool", norm="batchnorm", activation="leakyrelu")
    assert model.feature_shape == (8, 8, 4)
    assert model(torch.randn(2, 3, 32, 16)).shape == (2, 7)


def test_default_parameter_count_matches_the_papers_convnet():
    model = convnet(3, 10, 32)
    # Hand count for ConvNet (width 128, depth 3, instance norm) on 3x32x32, 10 classes:
    #   conv1  3*128*9 + 128   =   3_584;  norm1 (GroupNorm affine) 2*128 = 256
    #   conv2  128*128*9 + 128 = 147_584;  norm2 256
    #   conv3  128*128*9 + 128 = 147_584;  norm3 256
    #   32 -> 16 -> 8 -> 4, features 128*4*4 = 2048; linear 2048*10 + 10 = 20_490
    #   total 3_584 + 147_584*2 + 256*3 + 20_490 = 320_010 (the DC papers' "0.32M" ConvNet)
    assert sum(p.numel() for p in model.parameters()) == 320_010
    # MNIST (1x28x28, padded to 32): conv1 1*128*9 + 128 = 1_280, the rest as above: 317_706.
    assert sum(p.numel() for p in convnet(1, 10, 28).parameters()) == 317_706


def test_layer_layout_follows_the_official_code():
    model = convnet(3, 10, 32)
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3
    norm = model.features[1]
    assert norm.num_groups == norm.num_channels == 128 and norm.affine
    names = [name for name, _ in model.named_parameters()]
    assert names[:4] == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"]
    assert names[-2:] == ["classifier.weight", "classifier.bias"]
    plain = convnet(3, 10, 32, norm="none", pooling="maxpool")
    assert [type(m) for m in plain.features] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d] * 3


def test_invalid_arguments_are_all_reported():
    with pytest.raises(ValueError) as info:
        convnet(0, 10, 32, width=0, norm="layer", pooling="none", activation="gelu")
    message = str(info.value)
    for name in ("'channels'", "'width'", "'norm'", "'pooling'", "'activation'"):
        assert name in message
    with pytest.raises(ValueError, match="'image_size'"):
        convnet(3, 10, (32, 0))


def test_functional_forward_with_own_params_equals_forward():
    torch.manual_seed(0)
    model = convnet(1, 10, 28, width=32)
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    got = functional_forward(model, dict(model.named_parameters()), x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_functional_forward_rejects_wrong_names():
    model = convnet(1, 10, 8, width=4)
    params = dict(model.named_parameters())
    params.pop("classifier.bias")
    params["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"Missing: \['classifier.bias'\]. Unexpected: \['extra'\]"):
        functional_forward(model, params, torch.randn(1, 1, 8, 8))


def test_functional_sgd_inner_loop_equals_torch_sgd():
    torch.manual_seed(0)
    model = convnet(1, 10, 8, width=16)
    reference = copy.deepcopy(model)
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    lr = 0.1

    # Functional: params_{k+1} = params_k - lr * grad, kept in the graph as an unrolled loop would.
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    for x, y in batches:
        loss = F.cross_entropy(functional_forward(model, params, x), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}

    optimizer = torch.optim.SGD(reference.parameters(), lr=lr)
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        optimizer.step()

    for name, p in reference.named_parameters():
        torch.testing.assert_close(params[name].detach(), p.detach(), rtol=0, atol=1e-6)


def test_flat_unflatten_round_trip_and_gradient_path():
    model = convnet(1, 10, 8, width=8)
    flat = flat_parameters(model)
    assert flat.shape == (sum(p.numel() for p in model.parameters()),)
    assert not flat.requires_grad
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    params = unflatten(model, flat)
    assert list(params) == [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert torch.equal(params[name], p.detach())
    assert torch.equal(flat_parameters(_load(model, params)), flat)

    # MTT's use: a flat student vector that requires grad receives gradients through the views.
    student = flat.clone().requires_grad_(True)
    functional_forward(model, unflatten(model, student), torch.randn(2, 1, 8, 8)).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0

    with pytest.raises(ValueError, match=f"1-D tensor of {flat.numel()} values"):
        unflatten(model, flat[:-1])


def _load(model: ConvNet, params: dict) -> ConvNet:
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        nn.init.zeros_(p)
    clone.load_state_dict(params, strict=False)
    return clone
