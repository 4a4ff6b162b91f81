"""MLP-Mixer (Tolstikhin et al. 2021) in plain torch, for 1-D signals and images."""

from __future__ import annotations

import torch
from torch import nn

from anydistill.core.recipe import PositiveInt
from anydistill.models.patches import PatchEmbedding, TokenMean, patch_grid


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each a pre-LayerNorm residual GELU MLP: ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class MLPMixer(nn.Module):
    """Patch embedding, ``depth`` Mixer blocks, LayerNorm and the mean over tokens, a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, patch_size: int | None, dim: int, depth: int,
                 token_hidden: int, channel_hidden: int):
        super().__init__()
        patch, tokens = patch_grid(input_shape, patch_size, "mixer")
        self.embed = PatchEmbedding(input_shape, patch, dim, tokens, positions=False)  # token mixing sees positions
        self.stages = nn.Sequential(*(MixerBlock(tokens, dim, token_hidden, channel_hidden) for _ in range(depth)))
        self.penultimate = nn.Sequential(nn.LayerNorm(dim), TokenMean())
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.stages(self.embed(x))))


def mixer(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    patch_size: PositiveInt | None = None,
    dim: PositiveInt = 64,
    depth: PositiveInt = 4,
    token_hidden: PositiveInt = 64,
    channel_hidden: PositiveInt = 128,
) -> MLPMixer:
    """An MLP-Mixer: ``[B, C, L]`` or ``[B, C, H, W] -> [B, num_classes]``.

    Patches of ``patch_size`` (default 4 samples along a (C, L) signal, 7x7 pixels of an image; it
    must divide the input) are the tokens.

    Module paths (the same in every token student): ``embed`` (patches -> ``[B, N, dim]``),
    ``stages.0`` .. ``stages.{depth-1}`` (the Mixer blocks, ``[B, N, dim]`` each),
    ``penultimate`` (LayerNorm + mean over tokens, ``[B, dim]``: the features to tap for losses
    and CKA) and ``head`` (the logits).

    Defaults on MNIST-1D (1x40, 10 tokens): 73,842 parameters; on 1x28x28 (16 tokens): 79,818.
    """
    return MLPMixer(input_shape, num_classes, patch_size, dim, depth, token_hidden, channel_hidden)
