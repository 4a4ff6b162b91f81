"""Learning curves of a diffusion student: every ``every`` optimizer steps the student is sampled at
its fewest steps (a teacher being trained: at ``teacher_steps``) from one fixed noise draw and scored against the validation split (sliced
Wasserstein for points, the Fréchet distance for digits), so convergence and stability are measured,
not guessed from the loss (DMD2's losses do not track sample quality).

Written to ``logs/<label>/curve.json`` (``[{"step", "iteration", "nfe", "metric", "value", "model"}, ...]``: optimizer
steps and training batches; ``model`` is ``student``, or ``teacher`` for the one point of a distilling method's
teacher at its many steps on the same draw, the level the student is to reach, rewritten
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
            teacher = getattr(getattr(module, "teacher", None), "model", None)
            if teacher is not None and hasattr(teacher, "schedule") and module.trains == "student":
                self.score(trainer, module, teacher)  # the level to reach: the teacher at its many steps, same draw

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # A method with several optimizers (dmd2's generator and critic) can move the step by more than one per batch.
        if trainer.global_step // self.every > max(self.last_step, 0) // self.every:
            self.score(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.points:
            self.plot()

    @torch.no_grad()
    def score(self, trainer: L.Trainer, module: L.LightningModule, teacher: torch.nn.Module | None = None) -> None:
        """One point: the student's samples at its fewest steps against the validation split (or, given
        ``teacher``, the teacher's at the evaluator's ``teacher_steps``: a point marked ``"model": "teacher"``)."""
        self.last_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        model, evaluator = teacher if teacher is not None else module.student, self.evaluator
        spec, steps = evaluator.plan(model)
        # A student at its fewest steps; a plain denoiser (a teacher being trained) at the teacher's many.
        steps = steps if getattr(model, "sampling", None) else [evaluator.teacher_steps]
        generator = torch.Generator().manual_seed(evaluator.sample_seed)
        shape = (self.num_samples, *evaluator.x_val.shape[1:])
        device = next(module.student.parameters()).device  # an exact teacher has no parameters of its own
        z = (torch.randn(shape, generator=generator) * schedule_of(model).noise_std).to(device)
        cond = labels_for(self.num_samples, model_classes(model))
        x = generate(model, z, None if cond is None else cond.to(device), steps[0], sampling=spec,
                     generator=torch.Generator(device=device).manual_seed(evaluator.sample_seed + 1)).x0.float().cpu()
        metric = "swd" if evaluator.is_points else "fd"
        value = evaluator.distances(x, evaluator.x_val)[metric] if bool(torch.isfinite(x).all()) else float("nan")
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.processed  # training iterations so far
        self.points.append({"step": trainer.global_step, "iteration": batches, "nfe": steps[0], "metric": metric, "value": value,
                            "model": "student" if teacher is None else "teacher"})
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.points, indent=1))

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5, 3))
        student = [p for p in self.points if p.get("model", "student") == "student"]
        axis.plot([p["step"] for p in student], [p["value"] for p in student], marker="o", markersize=3, label="student")
        for p in self.points:
            if p.get("model") == "teacher":
                axis.axhline(p["value"], color="grey", linestyle="--", label=f"teacher ({p['nfe']} NFE)")
                axis.legend(fontsize=7)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(f"{student[0]['metric']} to the validation split ({student[0]['nfe']} NFE)")
        axis.set_yscale("log")
        figure.tight_layout()
        figure.savefig(self.directory / "curve.png", dpi=120)
        plt.close(figure)

