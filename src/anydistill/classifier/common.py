"""Pieces every classifier method uses: the teacher signal of a batch and the validation step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anydistill.core.method import DistillationMethod
from anydistill.core.teacher import TeacherOutput


def teacher_signal(method: DistillationMethod, batch: dict[str, torch.Tensor], taps: Sequence[str] = ()) -> TeacherOutput:
    """The teacher's logits (and tapped features) for ``batch``: from the signal cache when the data
    module attached it to the batch, otherwise from an online teacher forward."""
    cached = "teacher/logits" in batch and all(f"teacher/features/{p}" in batch for p in taps)
    if cached:
        return TeacherOutput(batch["teacher/logits"], {p: batch[f"teacher/features/{p}"] for p in taps})
    if method.teacher is None:
        raise RuntimeError(f"{type(method).__name__} needs a teacher, but none was given.")
    return method.teacher(batch["x"], taps=taps)


def classifier_validation_step(method: DistillationMethod, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
    """Log the student's validation cross-entropy (``val/loss``) and accuracy (``val/accuracy``)."""
    logits = method.student(batch["x"])
    size = batch["y"].shape[0]
    method.log("val/loss", F.cross_entropy(logits.float(), batch["y"]), batch_size=size, sync_dist=True)
    accuracy = (logits.argmax(-1) == batch["y"]).float().mean()
    method.log("val/accuracy", accuracy, batch_size=size, prog_bar=True, sync_dist=True)
