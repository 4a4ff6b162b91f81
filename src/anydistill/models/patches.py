"""Pieces shared by the token students (`mixer`, `vit`): non-overlapping patches of 1-D signals or
images as tokens, and the mean over tokens that gives their penultimate features."""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_PATCH = {1: 4, 2: 7}  # by spatial rank: 4 samples of a 1-D signal (MNIST-1D's 40 -> 10 tokens), 7x7 pixels (28x28 -> 16)


def patch_grid(input_shape: tuple[int, ...], patch_size: int | None, model: str) -> tuple[int, int]:
    """``(patch_size, number of tokens)`` for a ``(C, L)`` signal or a ``(C, H, W)`` image.

    Raises:
        ValueError: one line when the input is not (C, L) / (C, H, W) or the patch does not tile it.
    """
    if len(input_shape) not in (2, 3):
        raise ValueError(f"{model} takes (C, L) signals or (C, H, W) images; the data gives {tuple(input_shape)}. Use mlp for flat features.")
    spatial = tuple(input_shape[1:])
    patch = DEFAULT_PATCH[len(spatial)] if patch_size is None else patch_size
    if patch < 1 or any(side % patch for side in spatial):
        raise ValueError(f"{model}'s patch_size {patch} must divide the input's {'x'.join(map(str, spatial))}; set patch_size to a divisor.")
    return patch, math.prod(side // patch for side in spatial)


class PatchEmbedding(nn.Module):
    """Non-overlapping patches, each linearly projected: ``[B, C, L] -> [B, L/p, dim]`` (patches
    along the sequence) or ``[B, C, H, W] -> [B, HW/p^2, dim]`` (row-major), plus an optional
    learned position embedding."""

    def __init__(self, input_shape: tuple[int, ...], patch_size: int, dim: int, tokens: int, positions: bool):
        super().__init__()
        conv = nn.Conv1d if len(input_shape) == 2 else nn.Conv2d
        self.projection = conv(input_shape[0], dim, kernel_size=patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02) if positions else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.projection(x).flatten(2).transpose(1, 2)
        return tokens + self.position if self.position is not None else tokens


class TokenMean(nn.Module):
    """``[B, N, D] -> [B, D]``: the mean over tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)
