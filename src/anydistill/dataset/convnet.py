"""The ConvNet family of the dataset-distillation protocol, and helpers to run it functionally.

``ConvNet-D`` is ``D`` blocks of ``conv 3x3 (width channels) -> norm -> activation -> 2x2 pool``
followed by one linear classifier on the flattened features (Zhao et al., DC, ICLR 2021;
``networks.py`` of VICO-UoE/DatasetCondensation). Every method of the matching family distils and
evaluates with it: DC/DSA match its gradients, DM its `ConvNet.embed` features, MTT its parameter
trajectories. The default (``width=128, depth=3``, instance norm, ReLU, average pooling) is the
``ConvNet`` of the papers' tables.

Two details follow the official code so that numbers and parameter layouts are comparable:

* instance norm is ``GroupNorm(width, width, affine=True)`` (one group per channel, with a learned
  per-channel scale and shift), not ``InstanceNorm2d``;
* single-channel images get ``padding=3`` in the first convolution (``padding=1`` elsewhere), so
  MNIST's 28x28 become 32x32 and the 3-block net ends on 4x4 features, as on CIFAR's 32x32.
  ``first_padding`` overrides this rule.

Functional use (unrolled inner loops, MTT's flat parameter snapshots): `functional_forward` runs a
model with a given parameter dict through ``torch.func.functional_call``; `flat_parameters` and
`unflatten` convert between a model's parameters and one flat vector, in ``model.parameters()``
order (the layout of MTT's expert buffers).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from anydistill.core.checks import as_image_size, is_int

Norm = Literal["instancenorm", "batchnorm", "none"]
Pooling = Literal["avgpool", "maxpool"]
Activation = Literal["relu", "leakyrelu", "sigmoid", "swish"]

_NORMS = ("instancenorm", "batchnorm", "none")
_POOLINGS = ("avgpool", "maxpool")
_ACTIVATIONS = ("relu", "leakyrelu", "sigmoid", "swish")


class ConvNet(nn.Module):
    """``D x [conv3x3 -> norm -> act -> pool2]`` then a linear classifier: ``[B, C, H, W] -> [B, K]``.

    Build it with `convnet`, which validates the arguments. Module paths follow the official code:
    ``features`` is one ``nn.Sequential`` (per block: ``Conv2d``, the norm unless ``norm='none'``,
    the activation, the pooling), ``classifier`` the final ``nn.Linear``. The parameter order is
    therefore conv weight, conv bias, norm weight, norm bias per block, then classifier weight and
    bias, the same as the official ``ConvNet``.

    Attributes:
        feature_shape: ``(width, h, w)``, the shape of one image's feature map after the last block.
        num_features: ``width * h * w``, the length of `embed`'s output.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        width: int,
        depth: int,
        norm: Norm,
        pooling: Pooling,
        activation: Activation,
        first_padding: int,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, (height, breadth) = channels, image_size
        for block in range(depth):
            padding = first_padding if block == 0 else 1
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=padding))
            height, breadth = height + 2 * padding - 2, breadth + 2 * padding - 2
            if norm == "instancenorm":
                layers.append(nn.GroupNorm(width, width, affine=True))
            elif norm == "batchnorm":
                layers.append(nn.BatchNorm2d(width, affine=True))
            layers.append(_activation(activation))
            layers.append(nn.AvgPool2d(2, 2) if pooling == "avgpool" else nn.MaxPool2d(2, 2))
            in_channels, height, breadth = width, height // 2, breadth // 2
        self.features = nn.Sequential(*layers)
        self.feature_shape = (width, height, breadth)
        self.num_features = width * height * breadth
        self.classifier = nn.Linear(self.num_features, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """The flattened features before the classifier (DM's embedding): ``[B, C, H, W] -> [B, F]``."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: ``[B, C, H, W] -> [B, num_classes]``."""
        return self.classifier(self.embed(x))


def _activation(name: str) -> nn.Module:
    # Not in-place (the official ReLU is): the values are the same, and an in-place activation would
    # overwrite the output of the norm layer before it, which forward hooks (feature taps) return.
    if name == "relu":
        return nn.ReLU()
    if name == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    if name == "sigmoid":
        return nn.Sigmoid()
    return nn.SiLU()  # swish: x * sigmoid(x)


def convnet(
    channels: int,
    num_classes: int,
    image_size: int | tuple[int, int],
    *,
    width: int = 128,
    depth: int = 3,
    norm: Norm = "instancenorm",
    pooling: Pooling = "avgpool",
    activation: Activation = "relu",
    first_padding: int | None = None,
) -> ConvNet:
    """A `ConvNet` for ``[B, channels, H, W]`` images, validated.

    Args:
        channels: input channels (1 for MNIST and digits, 3 for CIFAR).
        num_classes: outputs of the classifier.
        image_size: ``H`` (square images) or ``(H, W)``.
        width: channels of every convolution (the papers' ``net_width``, 128).
        depth: number of conv blocks (3 for 28-32 px images, 4 for 64 px, 5 for 128 px).
        norm: ``'instancenorm'`` (``GroupNorm(width, width)``), ``'batchnorm'`` or ``'none'``.
        pooling: ``'avgpool'`` or ``'maxpool'``, both 2x2 with stride 2.
        activation: ``'relu'``, ``'leakyrelu'`` (slope 0.01), ``'sigmoid'`` or ``'swish'``.
        first_padding: padding of the first convolution; ``None`` applies the official rule
            (3 for single-channel images, so 28 px become 32 px; 1 otherwise).

    Raises:
        ValueError: listing every invalid argument, including a depth that would shrink the
            feature map below 1x1 (the message gives the largest depth that fits).
    """
    problems = [
        f"The '{name}' parameter of convnet must be an int >= 1. Got {value!r}."
        for name, value in (("channels", channels), ("num_classes", num_classes), ("width", width), ("depth", depth))
        if not is_int(value) or value < 1
    ]
    size = as_image_size(image_size)
    if size is None:
        problems.append(
            f"The 'image_size' parameter of convnet must be an int >= 1 or a pair (H, W) of them. Got {image_size!r}."
        )
    for name, value, allowed in (
        ("norm", norm, _NORMS), ("pooling", pooling, _POOLINGS), ("activation", activation, _ACTIVATIONS)
    ):
        if value not in allowed:
            problems.append(
                f"The '{name}' parameter of convnet must be one of {', '.join(map(repr, allowed))}. Got {value!r}."
            )
    if first_padding is not None and (not is_int(first_padding) or first_padding < 0):
        problems.append(f"The 'first_padding' parameter of convnet must be an int >= 0 or None. Got {first_padding!r}.")
        first_padding = 1
    if first_padding is None:
        first_padding = 3 if channels == 1 else 1
    if size is not None and is_int(depth) and depth >= 1:
        fits = _max_depth(size, first_padding)
        if depth > fits:
            problems.append(
                f"A ConvNet of depth {depth} on {size[0]}x{size[1]} images (first padding {first_padding}) would shrink "
                f"the feature map below 1x1; use depth <= {fits} or larger images."
            )
    if problems:
        raise ValueError("\n".join(problems))
    return ConvNet(
        channels, num_classes, size, width=width, depth=depth, norm=norm, pooling=pooling,
        activation=activation, first_padding=first_padding,
    )


def _max_depth(size: tuple[int, int], first_padding: int) -> int:
    """How many conv+pool blocks keep both spatial sizes >= 1."""
    depth, (height, breadth), padding = 0, size, first_padding
    while True:
        height, breadth = (height + 2 * padding - 2) // 2, (breadth + 2 * padding - 2) // 2
        if height < 1 or breadth < 1:
            return depth
        depth, padding = depth + 1, 1


def functional_forward(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` with its parameters replaced by ``params`` (``torch.func.functional_call``).

    Gradients flow to the tensors in ``params`` (e.g. the unrolled student weights of MTT or of a
    functional SGD inner loop), not to ``model``'s own parameters. Buffers are the model's own: a
    batch-norm model in ``train()`` mode still updates its running statistics.

    Args:
        model: the architecture (its own parameter values are not used).
        params: one tensor per name of ``model.named_parameters()``, with the same shapes.
        x: the model's input, e.g. ``[B, C, H, W]``.

    Raises:
        ValueError: ``params`` misses a parameter name or has one the model does not.
    """
    expected = {name for name, _ in model.named_parameters()}
    missing, unexpected = sorted(expected - params.keys()), sorted(params.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"functional_forward needs exactly the parameter names of {type(model).__name__}. "
            f"Missing: {missing}. Unexpected: {unexpected}."
        )
    return functional_call(model, params, (x,))


def flat_parameters(model: nn.Module) -> Tensor:
    """All parameters of ``model`` concatenated into one vector ``[P]``, in ``model.parameters()`` order.

    The result is a new tensor, detached from the model (a snapshot, as MTT stores per epoch).
    """
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Split a flat vector ``[P]`` into ``{name: tensor}`` shaped like ``model.named_parameters()``.

    The inverse of `flat_parameters`. The tensors are views of ``flat``, so gradients of anything
    computed from them (e.g. through `functional_forward`) flow back to ``flat``.

    Raises:
        ValueError: ``flat`` is not 1-D with exactly the model's number of parameters.
    """
    shapes = [(name, p.shape, p.numel()) for name, p in model.named_parameters()]
    total = sum(n for _, _, n in shapes)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(
            f"unflatten needs a 1-D tensor of {total} values for {type(model).__name__}. Got shape {tuple(flat.shape)}."
        )
    params, offset = {}, 0
    for name, shape, n in shapes:
        params[name] = flat[offset : offset + n].view(shape)
        offset += n
    return params
