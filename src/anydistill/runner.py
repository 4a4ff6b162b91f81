"""Run a validated recipe: build data, teacher and students, train each method with Lightning,
evaluate every model with the same evaluator, and write the run directory and its report."""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from safetensors.torch import load_file

from anydistill import __version__
from anydistill.catalog import Recipe, build_models, data_shapes, load_teacher_weights
from anydistill.core.cache import open_or_build_cache
from anydistill.core.errors import RunDirError
from anydistill.core.evaluator import Evaluator
from anydistill.core.method import DistillationMethod
from anydistill.core.rundir import RunDir, write_atomic
from anydistill.core.teacher import Teacher
from anydistill.report import write_report
from anydistill.teachers_section import build_teacher_mixture, local_teachers

# Lightning's advice for multi-core data loading does not apply to in-memory tensors.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
# Epoch-level metrics are logged whatever the step interval; a small dataset needs no advice.
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
# Lightning's own use of a torch API that torch 2.13 deprecated; nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def is_main_process() -> bool:
    """Rank 0 of a distributed run (or the only process): the one that writes files."""
    return rank_zero_only.rank == 0


def run_info(recipe: Recipe, command: str | None = None) -> dict[str, Any]:
    """Versions, seed and how the run was started (run.json): the CLI passes its command line;
    a run started from Python records the script and the call."""
    import numpy

    return {
        "versions": {
            "anydistill": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": L.__version__,
            "numpy": numpy.__version__,
            "platform": platform.platform(),
        },
        "seed": recipe.seed,
        "command": command or f"python {' '.join(sys.argv) or '-'}  (anydistill.runner.run_recipe, Python API)",
        "recipe": recipe.source,
        "world_size": recipe.trainer.devices * recipe.trainer.num_nodes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def build_teacher(recipe: Recipe, teacher_model: torch.nn.Module | None, datamodule: Any = None) -> Teacher | None:
    """The frozen teacher: a pretrained builder, an architecture plus a ``checkpoint``, a
    `ServedTeacher` (``teacher: {server: ...}``, connected), or several teachers mixed into one
    (``teachers:`` + ``mix:``, `TeacherMixture`)."""
    if recipe.teachers:
        shapes = data_shapes(recipe.data, datamodule)
        return build_teacher_mixture(recipe.teachers, recipe.mix, lambda c: c.target(**shapes, **c.kwargs), load_teacher_weights, connect=True)
    if recipe.teacher_server is not None:
        from anydistill.lm.served.client import ServedTeacher

        served = ServedTeacher(**recipe.teacher_server)
        served.connect()
        return served
    if teacher_model is None:
        return None
    if recipe.teacher_checkpoint:  # validated by load_recipe, which loaded it once already
        load_teacher_weights(teacher_model, recipe.teacher_checkpoint, recipe.teacher.name)
    spec = {k: v for k, v in recipe.resolved["teacher"].items() if k != "checkpoint"}  # weights are hashed anyway
    return Teacher(teacher_model, name=recipe.teacher.name, spec=json.dumps(spec, sort_keys=True))


def check_served_teacher(run_dir: RunDir, teacher: Any, resume: bool) -> None:
    """Record the served teacher's fingerprint in the run directory (``served_teacher.json``); on
    ``--resume``, refuse a server that now serves another checkpoint (the run would mix two teachers)."""
    record = {"server": teacher.url, "model": teacher.model_name, "fingerprint": teacher.fingerprint()}
    path = run_dir.path / "served_teacher.json"
    if resume and path.is_file():
        earlier = json.loads(path.read_text())
        if earlier.get("fingerprint") != record["fingerprint"]:
            raise RunDirError(f"--resume: the teacher server {teacher.url} serves another checkpoint than this run's (fingerprint "
                              f"{record['fingerprint'][:12]}, the run's {str(earlier.get('fingerprint'))[:12]}): restart it with the run's teacher.")
        return
    run_dir.write_json("served_teacher.json", record)


def check_teachers(run_dir: RunDir, mixture: Any, resume: bool) -> None:
    """Record every teacher's fingerprint of a mixture (``teachers.json``); on ``--resume``, refuse a
    teacher whose weights (or server) changed since the run started."""
    record = mixture.fingerprints()
    path = run_dir.path / "teachers.json"
    if resume and path.is_file():
        earlier = json.loads(path.read_text())
        changed = [name for name in record if earlier.get(name) != record[name]]
        if changed or set(earlier) != set(record):
            raise RunDirError(f"--resume: teacher{'s' if len(changed) != 1 else ''} {', '.join(changed or sorted(set(earlier) ^ set(record)))} "
                              "changed since this run started (another checkpoint or server): give the run's teachers back, or start a new run.")
        return
    run_dir.write_json("teachers.json", record)


def make_trainer(recipe: Recipe, run_dir: RunDir, label: str, evaluator: Evaluator | None = None) -> L.Trainer:
    """A Lightning Trainer writing CSV logs and epoch-end checkpoints under ``run_dir`` (the
    method's own ``max_epochs`` when its entry sets one), with the evaluator's callbacks (curves)."""
    spec = recipe.trainer
    checkpoints = ModelCheckpoint(dirpath=run_dir.checkpoint_dir(label), filename="{epoch}", save_last=True,
                                  save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True)
    loggers: list[Logger] = [CSVLogger(run_dir.path / "logs", name=label, version="")]
    if spec.logger == "tensorboard":  # load_recipe checked that a TensorBoard writer is installed
        loggers.append(TensorBoardLogger(run_dir.path / "logs", name=label, version="tensorboard"))
    elif spec.logger == "mlflow":  # a local SQLite store (MLflow's file store is deprecated): nothing leaves the machine
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(experiment_name=run_dir.path.name, run_name=label,
                                    tracking_uri=f"sqlite:///{(run_dir.path / 'mlflow.db').resolve()}",
                                    artifact_location=(run_dir.path / "mlflow-artifacts").resolve().as_uri()))
    return L.Trainer(
        **spec.hardware(),
        max_epochs=recipe.methods[label].max_epochs or spec.max_epochs,
        max_steps=spec.max_steps,
        accumulate_grad_batches=spec.accumulate_grad_batches,
        gradient_clip_val=spec.gradient_clip_val,
        limit_train_batches=spec.limit_train_batches,
        log_every_n_steps=spec.log_every_n_steps,
        deterministic=spec.deterministic,
        enable_progress_bar=spec.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # data modules shard by rank themselves (EpochShuffleSampler)
        logger=loggers,
        callbacks=[EpochRowInCheckpoint(), checkpoints,
                   *(evaluator.callbacks(label, run_dir.path / "logs" / label) if evaluator is not None else [])],
        default_root_dir=run_dir.path,
    )


def run_recipe(recipe: Recipe, run_dir: RunDir, *, resume: bool = False, command: str | None = None,
               trained: dict[str, torch.nn.Module] | None = None) -> dict[str, dict[str, Any]]:
    """Train and evaluate every method of ``recipe``; returns and writes ``metrics.json``.

    ``command`` is how the run was started, saved in run.json (the CLI passes its command line).
    ``trained``, when given, receives each method's trained model by label (the Python API's result).

    With ``resume``, models already in metrics.json are skipped and an interrupted method continues
    from its last epoch-end checkpoint.
    """
    main = is_main_process()
    if main and not resume:
        run_dir.write_config(recipe.resolved)
        run_dir.write_json("run.json", run_info(recipe, command))
    L.seed_everything(recipe.seed, verbose=False)  # a teacher built here (no checkpoint) is seeded too
    datamodule = recipe.data.target(**recipe.data.kwargs)
    datamodule.setup()
    _, pretrained = build_models(recipe.data, recipe.student, recipe.teacher, datamodule)
    teacher = build_teacher(recipe, pretrained, datamodule) if not any(c.target.trains == "teacher" for c in recipe.methods.values()) else None
    evaluator: Evaluator = recipe.evaluation.target(
        data=datamodule, student_spec=recipe.resolved.get("student"), data_name=recipe.data.name, **recipe.evaluation.kwargs
    )
    metrics = run_dir.read_metrics() if resume else {}
    if recipe.teacher_server is not None and main:
        check_served_teacher(run_dir, teacher, resume)
    if recipe.teachers and main:
        check_teachers(run_dir, teacher, resume)

    if main:
        if teacher is not None and teacher.model is not None and "teacher" not in metrics:  # a served teacher has no module here
            metrics["teacher"] = {**evaluator.evaluate(teacher.model, teacher, "pretrained"), "role": "teacher", "method": "pretrained"}
            run_dir.write_json("metrics.json", metrics)
        for name, member in local_teachers(teacher).items() if recipe.teachers else ():  # several teachers: a row each (a served one has no module here)
            if f"teacher-{name}" not in metrics:
                metrics[f"teacher-{name}"] = {**evaluator.evaluate(member.model, member, "pretrained"), "role": "teacher", "method": "pretrained"}
                run_dir.write_json("metrics.json", metrics)
        for label, row in evaluator.baselines(skip=set(metrics)).items():
            metrics[label] = {**row, "role": "baseline"}
            run_dir.write_json("metrics.json", metrics)

    signals: dict[str, torch.Tensor] | None = None
    for label, component in recipe.methods.items():
        # A teacher trained in the run is one row, "teacher", whatever its method's label.
        if ("teacher" if component.target.trains == "teacher" else label) in metrics:
            if component.target.trains == "teacher":  # resumed after the teacher was trained
                teacher = build_trained_teacher(recipe, run_dir, label, datamodule)
            continue
        L.seed_everything(recipe.seed, verbose=False)
        trains_teacher = component.target.trains == "teacher"
        student_model, teacher_model = build_models(recipe.data, recipe.student, recipe.teacher, datamodule)
        model = teacher_model if trains_teacher else student_model
        method: DistillationMethod = component.target(
            student=model, teacher=teacher if component.target.needs_teacher else None, optimizer=component.optimizer or recipe.optimizer,
            **component.kwargs
        )
        datamodule.attach_signals({})
        if hasattr(datamodule, "use_unlabelled"):  # with data.labelled_count: every row, or the labelled ones
            datamodule.use_unlabelled(component.target.unlabelled)
        if recipe.cache.enabled and component.target.needs_teacher:
            if signals is None:
                signals, _, _ = open_or_build_cache(
                    Path(recipe.cache.dir), teacher, datamodule.split("train")[0],
                    dataset_fingerprint=datamodule.fingerprint("train"), transform=datamodule.transform,
                    features=recipe.cache.features,
                )
            datamodule.attach_signals(signals)
        trainer = make_trainer(recipe, run_dir, label, evaluator)
        log = run_dir.path / "logs" / label / "metrics.csv"
        earlier_log = read_csv_rows(log) if resume and main else []
        checkpoint = run_dir.last_checkpoint(label) if resume else None
        pending = pending_epoch_row(checkpoint) if earlier_log else None  # read now: fit overwrites last.ckpt
        # Training randomness (dropout, augmentation, sampled negatives) starts from the seed
        # whatever building the models drew: a module passed in from Python (copied, not built)
        # trains exactly as the recipe that builds it.
        L.seed_everything(recipe.seed, verbose=False)
        started = time.perf_counter()
        if component.target.own_loop:
            method.attach_data(datamodule)
            trainer.fit(method, ckpt_path=checkpoint)
        else:
            trainer.fit(method, datamodule=datamodule, ckpt_path=checkpoint)
        train_time = time.perf_counter() - started
        if earlier_log:
            restore_log_history(log, earlier_log, pending)
        spec = recipe.resolved["teacher" if trains_teacher else "student"]
        if trains_teacher:
            teacher = Teacher(method.student, name=f"{recipe.teacher.name} (trained)")
        if trained is not None:
            trained[label] = method.student
        if main:
            evaluator.export(method.student, spec, run_dir.checkpoint_dir(label), component.name)
            role = "teacher" if trains_teacher else ("baseline" if component.target.baseline else "student")
            row = evaluator.evaluate(method.student, teacher, component.name)
            metrics["teacher" if trains_teacher else label] = {
                **row, **method.summary(), "method": component.name, "role": role, "train_time_s": round(train_time, 2),
                "world_size": trainer.world_size, **({"label": label} if trains_teacher and label != "teacher" else {})}
            run_dir.write_json("metrics.json", metrics)
    if main:
        evaluator.summarise(metrics)
        run_dir.write_json("metrics.json", metrics)
        if evaluator.card():
            run_dir.write_json("evaluation.json", evaluator.card())
        write_report(run_dir.path)
    return metrics


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log (empty if there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


class EpochRowInCheckpoint(L.Callback):
    """Keeps the epoch's training means (``train/*_epoch``) in every checkpoint.

    Lightning writes them to the CSV log only after the epoch-end checkpoint is saved, so a run
    killed in between would resume without that epoch in its learning curve."""

    KEY = "anydistill_epoch_row"

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        means = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and k.endswith("_epoch")}
        if means:
            checkpoint[self.KEY] = {"epoch": trainer.current_epoch, "step": trainer.global_step - 1, **means}


def pending_epoch_row(checkpoint: str | Path | None) -> dict[str, Any] | None:
    """The epoch row `EpochRowInCheckpoint` stored in ``checkpoint`` (None if there is none)."""
    if checkpoint is None:
        return None
    return torch.load(str(checkpoint), map_location="cpu", weights_only=False).get(EpochRowInCheckpoint.KEY)


def restore_log_history(path: Path, earlier: list[dict[str, str]], pending: dict[str, Any] | None = None) -> None:
    """Put back the epochs logged before an interruption: Lightning's CSV logger starts
    ``metrics.csv`` anew when a run resumes, and the report's learning curves need them all.
    ``pending`` is the resumed checkpoint's epoch row, added if the log never received it."""
    later = read_csv_rows(path)
    resumed_at = min((int(r["epoch"]) for r in later if r.get("epoch")), default=None)
    kept = [r for r in earlier if r.get("epoch") and (resumed_at is None or int(r["epoch"]) < resumed_at)]
    means = [key for key in pending or {} if key not in ("epoch", "step")]
    if pending and not any(r.get("epoch") == str(pending["epoch"]) and any(r.get(k) for k in means) for r in kept):
        kept.append({key: str(value) for key, value in pending.items()})
    fields = list(dict.fromkeys(key for row in [*kept, *later] for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows([*kept, *later])
    write_atomic(path, buffer.getvalue())


def build_trained_teacher(recipe: Recipe, run_dir: RunDir, label: str, datamodule: Any = None) -> Teacher:
    """The teacher trained by method ``label`` earlier in this run, reloaded from its export."""
    _, model = build_models(recipe.data, recipe.student, recipe.teacher, datamodule)
    model.load_state_dict(load_file(str(run_dir.checkpoint_dir(label) / "model.safetensors")))
    return Teacher(model, name=f"{recipe.teacher.name} (trained)")
