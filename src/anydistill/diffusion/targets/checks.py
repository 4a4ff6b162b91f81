"""Argument checks shared by the diffusion targets (times, shapes, counts)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from anydistill.core.checks import is_finite_number

# a model as the targets call it: fn(x [B, ...], t [B]) -> prediction [B, ...]
ModelFn = Callable[[Tensor, Tensor], Tensor]


def as_time(t: Tensor | float) -> Tensor:
    """A time as a tensor: tensors pass through, a float becomes a float64 0-dim tensor."""
    if isinstance(t, Tensor):
        return t
    if is_finite_number(t):
        return torch.tensor(float(t), dtype=torch.float64)
    raise ValueError(f"Times must be tensors [B] (or 0-dim) or floats. Got {type(t).__name__}.")


def batch_t(t: Tensor, x: Tensor, owner: str) -> Tensor:
    """``t`` as ``[B]``: a 0-dim time is shared by the batch; a wrong shape is refused."""
    if t.ndim == 0:
        return t.expand(x.shape[0]) if x.ndim else t
    if t.ndim != 1 or x.ndim == 0 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"{owner} needs times of shape [B], one per example of the data [B, ...], or 0-dim. "
            f"Got t of shape {tuple(t.shape)} for data of shape {tuple(x.shape)}."
        )
    return t


def same_shape_problems(owner: str, **tensors: Tensor) -> list[str]:
    """One line if an argument is not a tensor or the tensors' shapes differ; else none."""
    problems = [
        f"The '{name}' argument of {owner} must be a tensor. Got {type(value).__name__}."
        for name, value in tensors.items()
        if not isinstance(value, Tensor)
    ]
    if problems:
        return problems
    shapes = {name: tuple(value.shape) for name, value in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        return [f"{owner} needs {', '.join(shapes)} of the same shape. Got {listed}."]
    return []


def is_count(n: object) -> bool:
    """True for an int >= 1 (not a bool)."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1
