"""`DistillationMethod`: the small base every method subclasses (a `LightningModule`)."""

from __future__ import annotations

import random
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import nn

from anydistill.core.errors import TrainingError
from anydistill.core.optim import build_optimizer
from anydistill.core.recipe import OptimizerSpec
from anydistill.core.teacher import Teacher


class DistillationMethod(L.LightningModule):
    """Holds the student (plus any auxiliary trainable nets) and references the frozen teacher.

    Subclasses implement ``training_step`` (and usually ``validation_step``); their ``__init__``
    takes ``student``, ``teacher`` and ``optimizer`` first, then typed keyword-only
    hyperparameters, which are exactly the keys a recipe may set for the method.

    Class attributes describe the method for ``anydistill methods``:
        family: "classifier" | "lm" | "diffusion" | "dataset".
        paper: short citation of the paper the method implements.
        data: the data source it trains on ("real", "teacher-generated", "on-policy", "data-free").
        needs_teacher: whether a recipe must name a teacher.
        trains: "student", or "teacher" for the method that trains a teacher from labels.
        baseline: a reference the students are compared with (``scratch``), not a distillation.
        unlabelled: the method learns from the teacher's signals on any input, so with a data
            source's ``labelled_count`` it sees every training row (labels -100 outside the
            labelled ones, which its label terms ignore); methods without it see the labelled rows only.
        own_loop: the method draws its own batches (e.g. class-balanced real images for dataset
            distillation): the runner calls `attach_data` and then fits with the method's own
            ``train_dataloader`` instead of the data module's loaders.
        served_teacher: the method can learn from a teacher in another process
            (``teacher: {server: ...}``, `anydistill.lm.served.ServedTeacher`), which has no module here.
        several_teachers: the method can learn from several teachers mixed into one signal
            (``teachers:`` with ``mix:``, `anydistill.lm.teacher_mixture.TeacherMixture`).
        evaluator: the evaluator (a registered name or an import path) that scores what the method
            trains when its family's cannot (Mirage's graph sets); empty: the family's.
    """

    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    data: ClassVar[str] = "real"
    needs_teacher: ClassVar[bool] = True
    trains: ClassVar[str] = "student"
    baseline: ClassVar[bool] = False
    own_loop: ClassVar[bool] = False
    unlabelled: ClassVar[bool] = False
    served_teacher: ClassVar[bool] = False
    several_teachers: ClassVar[bool] = False
    evaluator: ClassVar[str] = ""

    def __init__(self, student: nn.Module, teacher: Teacher | nn.Module | None = None, optimizer: OptimizerSpec | None = None):
        super().__init__()
        self.student = student
        if isinstance(teacher, nn.Module):  # a bare network from a user's own Trainer code: frozen here
            teacher = Teacher(teacher)
        self.teacher = teacher  # a plain object, not a submodule: never saved, never optimized
        self.optimizer_spec = optimizer or OptimizerSpec()
        self._epoch_sums: dict[str, list] = {}  # name -> [weighted sum, count]: not model state

    def attach_data(self, datamodule: Any) -> None:
        """Called before fitting an ``own_loop`` method, with the recipe's set-up data module."""

    def summary(self) -> dict[str, Any]:
        """Facts about the finished training that belong in the method's metrics row (none by default)."""
        return {}

    def resolved_params(self) -> dict[str, Any]:
        """Parameters left unset in the recipe whose values the method derived (from a paper's
        table, say); the recipe loader writes them into the run's config.yaml. None by default."""
        return {}

    def starts_from_teacher(self) -> bool:
        """Whether training begins by copying the teacher's weights into the student (the
        recipe loader then requires the two architectures to match). False by default."""
        return False

    def teacher_taps(self) -> list[str]:
        """Module paths of the teacher whose outputs the method reads (validated against the model)."""
        return []

    def student_taps(self) -> list[str]:
        """Module paths of the student whose outputs the method reads."""
        return []

    def recipe_problems(
        self, *, teacher_shapes: dict[str, torch.Size], student_shapes: dict[str, torch.Size], max_epochs: int
    ) -> list[str]:
        """Problems a recipe can only show once the models exist: the shapes of the tapped outputs
        (from one dry forward at validation) and the schedule. One line each; none by default."""
        return []

    def data_problems(self, datamodule: Any, teacher: nn.Module | None) -> list[str]:
        """Problems between the models and the set-up data module (a vocabulary, the sequence
        length) that `anydistill validate` reports before any training. One line each; none by
        default. The data is set up for this only when a method overrides it."""
        return []

    def log_train(self, name: str, value: torch.Tensor, batch_size: int, prog_bar: bool = False) -> None:
        """Record a training metric: ``<name>_epoch`` (the epoch mean, logged once at epoch end)
        and ``<name>_step`` (logged every ``trainer.log_every_n_steps`` steps).

        Lightning's ``self.log`` costs about half a millisecond per call, a tenth of a small
        student's step here; summing a detached tensor costs microseconds.
        """
        total = self._epoch_sums.setdefault(name, [torch.zeros((), device=value.device), 0])
        total[0] += value.detach().float() * batch_size
        total[1] += batch_size
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.log(f"{name}_step", value.detach(), on_step=True, on_epoch=False, prog_bar=prog_bar, batch_size=batch_size)

    def on_train_epoch_start(self) -> None:
        self._epoch_sums = {}

    def on_train_epoch_end(self) -> None:
        for name, (weighted, count) in self._epoch_sums.items():
            self.log(f"{name}_epoch", weighted / max(count, 1), sync_dist=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student's forward pass."""
        return self.student(x)

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer(self.optimizer_spec, self.parameters(), self.trainer.estimated_stepping_batches)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Stop before a non-finite loss reaches the weights: the last checkpoint stays the good one.
        # Under DDP every rank takes the same decision, or the healthy ones would wait forever.
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise TrainingError(
                f"The training loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                f"run the recipe again with a lower optimizer.lr (now {self.optimizer_spec.lr}) or with "
                f"trainer.gradient_clip_val set (models that finished are kept in this run directory)."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not save RNG states; with them a resumed run continues bit-exactly.
        # Stored as tensors and ints only, so that `torch.load(weights_only=True)` accepts the file.
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        checkpoint["anydistill_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("anydistill_rng")
        if state:
            torch.set_rng_state(state["torch"])
            kind, keys, position, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
            random.setstate(state["python"])
            if state.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
