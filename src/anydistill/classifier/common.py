"""Pieces every classifier method uses: the teacher signal of a batch and the validation step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anydistill.core.method import DistillationMethod
from anydistill.core.taps import capture_features
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


def student_and_teacher_features(
    method: DistillationMethod, batch: dict[str, torch.Tensor], student_layers: Sequence[str], teacher_layers: Sequence[str]
) -> tuple[TeacherOutput, torch.Tensor, dict[str, torch.Tensor]]:
    """One student forward on ``batch`` with its ``student_layers`` tapped, and the teacher's signal
    with its ``teacher_layers``: ``(teacher signal, student logits [B, C], {path: student feature})``.
    The student features keep their gradients."""
    signal = teacher_signal(method, batch, taps=teacher_layers)
    with capture_features(method.student, student_layers) as features:
        student_logits = method.student(batch["x"])
    return signal, student_logits, features


def classifier_validation_step(method: DistillationMethod, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
    """Log the student's validation cross-entropy (``val/loss``) and accuracy (``val/accuracy``)."""
    logits = method.student(batch["x"])
    size = batch["y"].shape[0]
    method.log("val/loss", F.cross_entropy(logits.float(), batch["y"]), batch_size=size, sync_dist=True)
    accuracy = (logits.argmax(-1) == batch["y"]).float().mean()
    method.log("val/accuracy", accuracy, batch_size=size, prog_bar=True, sync_dist=True)


def tapped_shapes(
    method: DistillationMethod, student_taps: Sequence[str], teacher_taps: Sequence[str]
) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
    """Shapes of the student's and the teacher's tapped outputs on two training rows, for a method
    that builds auxiliary modules (regressors, embedding heads) in ``setup``. The student is probed
    in eval mode without gradients, so that the probe moves no normalisation statistics."""
    example = method.trainer.datamodule.split("train")[0][:2]
    was_training = method.student.training
    method.student.eval()
    try:
        with torch.no_grad(), capture_features(method.student, student_taps) as student_features:
            method.student(example)
    finally:
        method.student.train(was_training)
    teacher_features = method.teacher(example, taps=teacher_taps).features if teacher_taps else {}
    return ({p: v.shape for p, v in student_features.items()}, {p: v.shape for p, v in teacher_features.items()})
