"""A model a user registers from Python (imported by test_python_api.py)."""

import torch.nn as nn


def tiny_mlp(input_shape: tuple[int, ...], num_classes: int, *, width: int = 8) -> nn.Module:
    """Flatten -> Linear(width) -> ReLU -> Linear(num_classes)."""
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, num_classes))
