"""The classifier evaluator: the same metrics for the teacher, baselines and students."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from anydistill.classifier.cka import linear_cka
from anydistill.core.evaluator import Evaluator
from anydistill.core.export import export_model
from anydistill.core.taps import capture_features, find_module
from anydistill.core.teacher import Teacher


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)| over equal-width
    confidence bins. ``probs`` [N, C], ``labels`` [N]."""
    confidence, prediction = probs.max(-1)
    correct = (prediction == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return float(ece)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, C] of ``model`` in eval mode for inputs ``x`` [N, ...], on CPU."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return logits


@torch.no_grad()
def latency_ms(model: nn.Module, x: torch.Tensor, batch_size: int = 256, repeats: int = 15) -> float:
    """Median wall time (ms) of one eval forward on a batch of ``batch_size`` rows of ``x``."""
    was_training = model.training
    model.eval()
    batch = x[:batch_size]
    for _ in range(3):  # warm-up: allocator and kernel selection
        model(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return statistics.median(times)


@torch.no_grad()
def layer_features(model: nn.Module, x: torch.Tensor, paths: list[str], batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """The outputs of the modules at ``paths`` for inputs ``x`` [N, ...], each flattened to [N, D]
    (float32, on CPU), from eval-mode forwards in batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    reference = next(model.parameters(), None)
    chunks: dict[str, list[torch.Tensor]] = {path: [] for path in paths}
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        if reference is not None:
            batch = batch.to(reference.device, reference.dtype if batch.is_floating_point() else batch.dtype)
        with capture_features(model, paths) as captured:
            model(batch)
        for path in paths:
            chunks[path].append(captured[path].flatten(1).float().cpu())
    model.train(was_training)
    return {path: torch.cat(values) for path, values in chunks.items()}


def evaluate_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_predictions: torch.Tensor | None = None
) -> dict[str, float]:
    """Test metrics of ``model`` on ``x`` [N, ...], ``y`` [N].

    Returns:
        accuracy, ece, params, latency_ms (per batch of 256 on this machine), threads and, when
        ``teacher_predictions`` [N] is given, teacher_agreement (fraction of equal argmax).
    """
    model = model.cpu()
    logits = predict_logits(model, x)
    predictions = logits.argmax(-1)
    metrics = {
        "accuracy": float((predictions == y).float().mean()),
        "ece": expected_calibration_error(logits.softmax(-1), y),
        "params": sum(p.numel() for p in model.parameters()),
        "latency_ms": latency_ms(model, x),
        "threads": torch.get_num_threads(),  # latency depends on it (torchrun sets 1 per process)
    }
    if teacher_predictions is not None:
        metrics["teacher_agreement"] = float((predictions == teacher_predictions).float().mean())
    return metrics


class ClassifierEvaluator(Evaluator):
    """Scores classifiers on the data module's test split (`evaluate_classifier`) plus validation
    accuracy, and the agreement with the teacher's test predictions (computed once per teacher).

    Args:
        score_split: the split the metrics are computed on: "test" for reported numbers, "val"
            to choose settings (`anydistill tune`): then the test split is never read.
        cka_pairs: ``[[teacher_layer, student_layer], ...]`` module paths (as feature taps name
            them) whose representations of the score split are compared with linear CKA
            (`anydistill.classifier.cka.linear_cka`, outputs flattened to [N, D]): each student and
            baseline row gets ``cka/<teacher_layer>~<student_layer>`` (the teacher's own row does
            not). Off by default; the teacher's features are kept for the whole run (N x D floats).
    """

    def __init__(self, data: Any, student_spec: dict[str, Any] | None = None, data_name: str | None = None,
                 score_split: Literal["val", "test"] = "test", cka_pairs: list[list[str]] | None = None):
        super().__init__(data, student_spec, data_name)
        self.score_split = score_split
        self.cka_pairs = [(teacher_layer, student_layer) for teacher_layer, student_layer in cka_pairs or []]
        self.x_test, self.y_test = data.split(score_split)
        self.x_val, self.y_val = data.split("val")
        self._teacher_predictions: dict[int, torch.Tensor] = {}  # by id of the teacher network
        self._teacher_features: dict[int, dict[str, torch.Tensor]] = {}  # the same, for cka_pairs

    @classmethod
    def settings_problems(cls, settings: dict[str, Any]) -> list[str]:
        return [f"cka_pairs: each entry is [teacher_layer, student_layer]; got {pair}."
                for pair in settings.get("cka_pairs") or [] if len(pair) != 2]

    @classmethod
    def model_problems(cls, settings: dict[str, Any], *, teacher_model: nn.Module | None, student_model: nn.Module | None) -> list[str]:
        pairs = settings.get("cka_pairs") or []
        if pairs and teacher_model is None:
            return ["cka_pairs: compares a student with the teacher; add a `teacher:` section."]
        problems = []
        for role, model, paths in (("teacher", teacher_model, {p[0] for p in pairs}), ("student", student_model, {p[1] for p in pairs})):
            for path in sorted(paths) if model is not None else []:
                try:
                    find_module(model, path)
                except LookupError as error:
                    problems.append(f"cka_pairs: the {role}'s {error}")
        return problems

    def cka(self, model: nn.Module, teacher: Teacher) -> dict[str, float]:
        """``cka/<teacher_layer>~<student_layer>``: linear CKA of each pair on the score split."""
        key = id(teacher.model)
        if key not in self._teacher_features:
            self._teacher_features[key] = layer_features(teacher.model, self.x_test, sorted({t for t, _ in self.cka_pairs}))
        student = layer_features(model, self.x_test, sorted({s for _, s in self.cka_pairs}))
        reference = self._teacher_features[key]
        return {f"cka/{t}~{s}": float(linear_cka(reference[t], student[s])) for t, s in self.cka_pairs}

    def evaluate(self, model: nn.Module, teacher: Teacher | nn.Module | None = None, method: str = "student") -> dict[str, Any]:
        reference = None
        if isinstance(teacher, nn.Module):  # a bare network, from a user's own Trainer code
            teacher = Teacher(teacher)
        if teacher is not None:
            key = id(teacher.model)
            if key not in self._teacher_predictions:
                self._teacher_predictions[key] = predict_logits(teacher.model, self.x_test).argmax(-1)
            reference = self._teacher_predictions[key]
        val_accuracy = float((predict_logits(model, self.x_val).argmax(-1) == self.y_val).float().mean())
        row = {**evaluate_classifier(model, self.x_test, self.y_test, reference), "val_accuracy": val_accuracy}
        if self.cka_pairs and teacher is not None and model is not teacher.model:
            row.update(self.cka(model, teacher))
        return row

    def export(self, model: nn.Module, spec: dict[str, Any], directory: Path, method: str) -> Path:
        """``model.safetensors`` + ``model.json``; a wrapped Hugging Face classifier (one with
        ``save_pretrained``, e.g. hf-sequence-classifier) is also saved in its ecosystem's format in
        the same folder, so ``AutoModelFor...Classification.from_pretrained(directory)`` loads it (its
        model.safetensors then holds the Hugging Face names, which the wrapper also loads)."""
        path = export_model(model, spec, directory)
        save_pretrained = getattr(model, "save_pretrained", None)
        if callable(save_pretrained):
            hf_config = getattr(getattr(model, "hf", None), "config", None)
            names = getattr(self.data, "class_names", None)  # string labels of the user's files, in index order
            if hf_config is not None and names and len(names) == hf_config.num_labels:
                hf_config.id2label = dict(enumerate(names))  # the exported config.json names the classes
                hf_config.label2id = {name: i for i, name in enumerate(names)}
            save_pretrained(directory)
        return path
