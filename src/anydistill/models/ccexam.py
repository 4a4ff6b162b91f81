"""Pretrained teachers shipped by PyPI packages (loaded from site-packages, never downloaded)."""

from __future__ import annotations

import importlib.resources

import torch
from torch import nn

from anydistill.core.errors import MissingPackageError


def ccexam_mnistnet(input_shape: tuple[int, ...], num_classes: int, *, pretrained: bool = True) -> nn.Module:
    """ccexam's ``MNISTNet`` (421,642 parameters; 99.05% on the MNIST test split), on CPU.

    It expects MNIST normalised with mean 0.1307 and std 0.3081, as `MNISTData` provides. Module
    paths: ``features.0``..``features.5`` (conv 32, ReLU, pool, conv 64, ReLU, pool), ``classifier``.
    """
    if tuple(input_shape) != (1, 28, 28) or num_classes != 10:
        raise ValueError(f"ccexam-mnistnet takes 1x28x28 inputs and 10 classes; the data gives {input_shape} and {num_classes}.")
    try:
        from ccexam.models import MNISTNet
    except ModuleNotFoundError:
        raise MissingPackageError("ccexam", "ccexam", "The pretrained MNIST teacher 'ccexam-mnistnet'") from None
    model = MNISTNet(28)
    if pretrained:
        weights = importlib.resources.files("ccexam") / "weights" / "mnist.pth"
        with importlib.resources.as_file(weights) as path:
            # Saved from CUDA by its authors, hence map_location.
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
