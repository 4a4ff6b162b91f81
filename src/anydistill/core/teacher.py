"""The frozen teacher: eval mode, no gradients, never part of a student checkpoint."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from anydistill.core.taps import capture_features


def state_fingerprint(model: nn.Module, salt: str = "") -> str:
    """SHA-256 of ``model``'s class name, ``salt`` and every parameter and buffer (names, dtypes,
    shapes, bytes): equal exactly when two models hold the same weights."""
    digest = hashlib.sha256(f"{model.__class__.__qualname__}|{salt}".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TeacherOutput:
    """What one teacher forward gives: ``logits`` [B, ...] and tapped ``features`` by module path."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Teacher:
    """A frozen model wrapper.

    It is deliberately not an ``nn.Module``: assigning it to a `DistillationMethod` does not register
    its parameters, so it never enters the student's ``state_dict``, optimizer or DDP wrapper.

    Args:
        model: the teacher network; it is put in eval mode and its parameters stop requiring grad.
        name: how reports and the cache manifest name it.
        spec: how the model was built (e.g. its recipe section), part of the fingerprint: two
            builds with equal weights but different options must not share a signal cache.
    """

    def __init__(self, model: nn.Module, name: str = "teacher", spec: str = ""):
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.spec = spec

    def to(self, device: torch.device | str) -> Teacher:
        """Move the teacher to ``device`` (kept in eval mode)."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, taps: Sequence[str] = ()) -> TeacherOutput:
        """Forward ``x`` [B, ...] under ``no_grad``; ``taps`` are module paths whose outputs to keep."""
        if self.model.training:  # a user may have flipped it; a teacher's dropout/BN must stay frozen
            self.model.eval()
        reference = next(self.model.parameters(), None)
        if reference is not None:
            # The batch may arrive on another device (a FitNets set-up pass, evaluation on CPU) or in
            # another precision (bf16-true training); the frozen teacher keeps its own.
            x = x.to(reference.device, reference.dtype if x.is_floating_point() else x.dtype)
        with capture_features(self.model, taps) as features:
            logits = self.model(x)
        return TeacherOutput(logits=logits, features=dict(features))

    def fingerprint(self) -> str:
        """SHA-256 of the class name and every parameter and buffer (names, dtypes, shapes, bytes).

        Computed afresh on each call (milliseconds for small teachers), so that in-place weight
        changes can never leave a stale cache looking valid.
        """
        return state_fingerprint(self.model, self.spec)

    def num_parameters(self) -> int:
        """Number of parameters of the wrapped model."""
        return sum(p.numel() for p in self.model.parameters())
