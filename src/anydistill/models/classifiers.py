"""Small reference models. Builders are named after what they return and take the data's
``input_shape`` and ``num_classes`` (injected by the engine) plus their own typed options."""

from __future__ import annotations

import math

from torch import nn


def mlp(input_shape: tuple[int, ...], num_classes: int, *, hidden: list[int] = [128]) -> nn.Sequential:  # noqa: B006
    """A ReLU multilayer perceptron on flattened inputs: ``[B, *input_shape] -> [B, num_classes]``.

    Module paths: ``0`` flattens, ``1`` is the first Linear, ``2`` its ReLU, and so on.
    """
    sizes = [math.prod(input_shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], num_classes))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv3x3-ReLU-MaxPool2 blocks, then a two-layer head: ``[B, C, H, W] -> [B, num_classes]``.

    Module paths mirror ccexam's MNISTNet: block ``i`` is ``features.{3i}`` (conv),
    ``features.{3i+1}`` (ReLU) and ``features.{3i+2}`` (pool); the head is ``classifier``.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: list[int], hidden: int):
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels, (height, width) = input_shape[0], input_shape[1:]
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * height * width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def small_cnn(
    input_shape: tuple[int, ...], num_classes: int, *, channels: list[int] = [8, 16], hidden: int = 64  # noqa: B006
) -> SmallCNN:
    """A `SmallCNN` with the given conv widths (one pooling block each) and head width."""
    return SmallCNN(input_shape, num_classes, channels, hidden)
