"""Learning curves of a diffusion student: every ``every`` optimizer steps the student is sampled at
its fewest steps (a teacher being trained: at ``teacher_steps``) from one fixed noise draw and scored against the validation split (sliced
Wasserstein for points, the Fréchet distance for digits), so convergence and stability are measured,
not guessed from the loss (DMD2's losses do not track sample quality).

Written to ``logs/<label>/curve.json`` (``[{"step", "nfe", "metric", "value"}, ...]``, rewritten
atomically at each point, resumed runs appended) and ``curve.png`` at the end of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

from anydistill.core.rundir import write_atomic
from anydistill.diffusion.common import labels_for, model_classes, schedule_of
from anydistill.diffusion.generate import generate


class CurveCallback(L.Callback):
    """Scores ``module.student`` every ``every`` optimizer steps on ``num_samples`` fixed draws.

    Args:
        evaluator: the run's `DiffusionEvaluator` (its validation split, classifier and plan).
        directory: where ``curve.json`` and ``curve.png`` go.
        every: optimizer steps between points.
        num_samples: samples per point (fixed noise and labels, seeded by the evaluator's seed).
    """

    def __init__(self, evaluator: Any, directory: Path, every: int, num_samples: int):
        self.evaluator, self.directory, self.every, self.num_samples = evaluator, Path(directory), every, num_samples
        self.points: list[dict[str, Any]] = []
        self.last_step = -1

    @property
    def path(self) -> Path:
        return self.directory / "curve.json"

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step > 0 and self.path.is_file():  # resumed: keep the points made before
            self.points = [p for p in json.loads(self.path.read_text()) if p["step"] < trainer.global_step]
        if trainer.global_step == 0:
            self.score(trainer, module)  # the starting point (a student copied from the teacher starts well)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step != self.last_step and step % self.every == 0:
            self.score(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.points:
            self.plot()

    @torch.no_grad()
    def score(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """One point: the student's samples at its fewest steps against the validation split."""
        self.last_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        model, evaluator = module.student, self.evaluator
        spec, steps = evaluator.plan(model)
        # A student at its fewest steps; a plain denoiser (a teacher being trained) at the teacher's many.
        steps = steps if getattr(model, "sampling", None) else [evaluator.teacher_steps]
        generator = torch.Generator().manual_seed(evaluator.sample_seed)
        shape = (self.num_samples, *evaluator.x_val.shape[1:])
        device = next(model.parameters()).device
        z = (torch.randn(shape, generator=generator) * schedule_of(model).noise_std).to(device)
        cond = labels_for(self.num_samples, model_classes(model))
        x = generate(model, z, None if cond is None else cond.to(device), steps[0], sampling=spec,
                     generator=torch.Generator(device=device).manual_seed(evaluator.sample_seed + 1)).x0.float().cpu()
        metric = "swd" if evaluator.is_points else "fd"
        value = evaluator.distances(x, evaluator.x_val)[metric] if bool(torch.isfinite(x).all()) else float("nan")
        self.points.append({"step": trainer.global_step, "nfe": steps[0], "metric": metric, "value": value})
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.points, indent=1))

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5, 3))
        axis.plot([p["step"] for p in self.points], [p["value"] for p in self.points], marker="o", markersize=3)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(f"{self.points[0]['metric']} to the validation split ({self.points[0]['nfe']} NFE)")
        axis.set_yscale("log")
        figure.tight_layout()
        figure.savefig(self.directory / "curve.png", dpi=120)
        plt.close(figure)

