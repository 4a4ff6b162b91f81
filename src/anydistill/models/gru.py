"""A GRU classifier over the sequence of a (C, L) signal or the rows of an image."""

from __future__ import annotations

import torch
from torch import nn

from anydistill.core.recipe import PositiveInt


class ToSequence(nn.Module):
    """``[B, C, L] -> [B, L, C]`` (time along the signal) or ``[B, C, H, W] -> [B, H, C*W]`` (rows as time steps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return x.transpose(1, 2)
        return x.permute(0, 2, 1, 3).flatten(2)


class GRULayer(nn.Module):
    """One ``nn.GRU`` layer returning only its outputs ``[B, T, hidden]`` (tappable, unlike the GRU's tuple)."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class LastStep(nn.Module):
    """``[B, T, D] -> [B, D]``: the output at the last time step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1]


class GRUClassifier(nn.Module):
    """Stacked single-layer GRUs over time; the last step's state is the penultimate feature."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int, layers: int):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"gru takes (C, L) signals or (C, H, W) images; the data gives {tuple(input_shape)}. Use mlp for flat features.")
        step_size = input_shape[0] if len(input_shape) == 2 else input_shape[0] * input_shape[2]
        self.sequence = ToSequence()
        self.stages = nn.Sequential(*(GRULayer(step_size if i == 0 else hidden, hidden) for i in range(layers)))
        self.penultimate = LastStep()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.stages(self.sequence(x))))


def gru(input_shape: tuple[int, ...], num_classes: int, *, hidden: PositiveInt = 128, layers: PositiveInt = 1) -> GRUClassifier:
    """A GRU classifier: ``[B, C, L]`` or ``[B, C, H, W] -> [B, num_classes]``.

    A signal is read along its length (L steps of C values), an image row by row (H steps of C*W
    values). Module paths: ``sequence`` (the reshaping, no parameters), ``stages.0`` ..
    ``stages.{layers-1}`` (one GRU layer each, ``[B, T, hidden]``), ``penultimate`` (the last
    step, ``[B, hidden]``: the features to tap for losses and CKA) and ``head`` (the logits).

    Defaults on MNIST-1D (1x40): 51,594 parameters; on 1x28x28: 61,962.
    """
    return GRUClassifier(input_shape, num_classes, hidden, layers)
