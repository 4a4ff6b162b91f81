"""Pieces shared by the methods that read pre-activation (pre-ReLU) responses, AB and OFD: the
connector that maps a student's responses onto the teacher's width, and the check that the tapped
layers really give pre-activation values.

In ``small-cnn`` the conv of block ``i`` is ``features.{3i}`` and its ReLU ``features.{3i+1}``, so
``features.0`` and ``features.3`` give pre-ReLU maps; ``classifier.1`` is the head's Linear, before
its ReLU. Tap the conv, linear or BatchNorm *before* the ReLU, and make sure that ReLU is not
in-place (an in-place ReLU overwrites the tapped tensor with its non-negative output).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from anydistill.core.method import DistillationMethod
from anydistill.core.taps import capture_features


def build_connector(student_shape: torch.Size, teacher_shape: torch.Size, *, identity_if_same_width: bool = False) -> nn.Module:
    """The connector r of AB and OFD: a bias-free 1x1 conv (conv maps) or linear map (flat
    features) from the student's width to the teacher's, then batch normalisation, initialised as
    the official codes do (weights N(0, 2 / (k_h k_w C_out)), BN scale 1 and shift 0).

    Args:
        student_shape, teacher_shape: the tapped outputs' shapes, batch dim included:
            ``[B, C, H, W]`` both, or ``[B, D]`` both.
        identity_if_same_width: return ``nn.Identity()`` when the widths agree (AB's official code).

    Raises:
        ValueError: one line when the two are not of the same kind.
    """
    if len(student_shape) != len(teacher_shape) or len(student_shape) not in (2, 4):
        raise ValueError(
            f"a student output {tuple(student_shape[1:])} cannot be connected to a teacher output {tuple(teacher_shape[1:])}; "
            f"pick two conv maps [C, H, W] or two flat features [D]"
        )
    c_s, c_t = student_shape[1], teacher_shape[1]
    if identity_if_same_width and c_s == c_t:
        return nn.Identity()
    if len(student_shape) == 4:
        layer, norm = nn.Conv2d(c_s, c_t, kernel_size=1, bias=False), nn.BatchNorm2d(c_t)
    else:
        layer, norm = nn.Linear(c_s, c_t, bias=False), nn.BatchNorm1d(c_t)
    fan_out = c_t * math.prod(getattr(layer, "kernel_size", (1,)))
    nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / fan_out))
    nn.init.ones_(norm.weight)
    nn.init.zeros_(norm.bias)
    return nn.Sequential(layer, norm)


def probe_outputs(method: DistillationMethod, student_taps: Sequence[str], teacher_taps: Sequence[str],
                  rows: int = 64) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The student's and the teacher's tapped outputs on the first ``rows`` training rows (the
    student in eval mode without gradients, so that the probe moves no normalisation statistics)."""
    example = method.trainer.datamodule.split("train")[0][:rows]
    was_training = method.student.training
    method.student.eval()
    try:
        with torch.no_grad(), capture_features(method.student, student_taps) as student_features:
            method.student(example.to(method.device))
    finally:
        method.student.train(was_training)
    teacher_features = method.teacher(example, taps=teacher_taps).features
    return dict(student_features), dict(teacher_features)


def preactivation_problems(method_name: str, role: str, features: dict[str, Tensor]) -> list[str]:
    """One line per tapped output with no negative value: the output of a ReLU (or of a pooling
    after one), not the pre-activation response the method needs."""
    return [
        f"{method_name} needs the {role}'s pre-activation (pre-ReLU) responses, but {role} layer '{path}' gave no "
        f"negative value on {len(value)} training rows; tap the conv, linear or BatchNorm before the ReLU "
        f"(small-cnn: features.0, features.3 or classifier.1)."
        for path, value in features.items()
        if value.numel() and bool((value >= 0).all())
    ]
