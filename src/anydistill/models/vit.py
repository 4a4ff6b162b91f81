"""A small Vision Transformer (Dosovitskiy et al. 2021) in plain torch, for 1-D signals and images."""

from __future__ import annotations

import torch
from torch import nn

from anydistill.core.recipe import PositiveInt
from anydistill.models.patches import PatchEmbedding, TokenMean, patch_grid


class ViT(nn.Module):
    """Patch embedding with learned positions, ``depth`` pre-LayerNorm transformer encoder blocks,
    LayerNorm and the mean over tokens (no class token), a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, patch_size: int | None, dim: int, depth: int,
                 heads: int, mlp_hidden: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"vit's dim ({dim}) must be a multiple of heads ({heads}).")
        patch, tokens = patch_grid(input_shape, patch_size, "vit")
        self.embed = PatchEmbedding(input_shape, patch, dim, tokens, positions=True)
        self.stages = nn.Sequential(*(
            nn.TransformerEncoderLayer(dim, heads, mlp_hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)
        ))
        self.penultimate = nn.Sequential(nn.LayerNorm(dim), TokenMean())
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(self.stages(self.embed(x))))


def vit(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    patch_size: PositiveInt | None = None,
    dim: PositiveInt = 64,
    depth: PositiveInt = 4,
    heads: PositiveInt = 4,
    mlp_hidden: PositiveInt = 128,
) -> ViT:
    """A small ViT: ``[B, C, L]`` or ``[B, C, H, W] -> [B, num_classes]``.

    Patches of ``patch_size`` are the tokens: by default 4 samples along a (C, L) signal (MNIST-1D's
    40 -> 10 tokens) and 7x7 pixels of an image (28x28 -> 16 tokens); it must divide the input.

    Module paths (the same in every token student): ``embed`` (patches + positions ->
    ``[B, N, dim]``), ``stages.0`` .. ``stages.{depth-1}`` (the encoder blocks, ``[B, N, dim]``
    each), ``penultimate`` (LayerNorm + mean over tokens, ``[B, dim]``: the features to tap for
    losses and CKA) and ``head`` (the logits).

    Defaults on MNIST-1D (1x40): 135,626 parameters; on 1x28x28: 138,890.
    """
    return ViT(input_shape, num_classes, patch_size, dim, depth, heads, mlp_hidden)
