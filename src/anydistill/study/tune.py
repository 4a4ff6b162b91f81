"""`anydistill tune`: choose one method's hyperparameters on the validation split with Optuna.

    anydistill tune RECIPE --method LABEL --trials N [--storage URL] [--study-name NAME]
                    [--set KEY=VALUE ...] [--space KEY=LOW:HIGH[:log] ...] [--runs DIR]

What a study does:

- **Only the chosen method trains**, plus the teacher it needs. A pretrained teacher or a
  ``teacher.checkpoint`` is used as is; a teacher the recipe trains (``methods.teacher``) is
  trained **once per study** and cached in the study's directory (``teacher/model.safetensors``),
  so every trial distills from the same teacher and a resumed study does not train it again.
- **Every score is a validation score; the test split is never read.** Families whose evaluator
  takes ``score_split`` (classifier, dataset) score the trained model with it set to ``val``;
  the others (lm, diffusion) use the last per-epoch validation metric the method logs.
- **Sampler and pruner**: TPE, seeded with the recipe's seed; a median pruner on the per-epoch
  validation scores, reported by a Lightning callback (`ReportToTrial`); a pruned trial stops
  training at the end of that epoch.
- **Resumable**: the study lives in its storage (SQLite by default, ``<runs>/tune.db``) and is
  loaded if it exists; ``--trials N`` is the total: trials already COMPLETE or PRUNED count.
- **Search space**: the method's ``search_space`` class attribute (ranges from its paper) plus
  the shared optimizer settings (`anydistill.core.space.OPTIMIZER_SPACE`); ``--space`` narrows,
  adds (``KEY=LOW:HIGH[:log]``, ``KEY=a,b,c``) or drops (``KEY=off``) a dimension, and a key fixed
  with ``--set`` is not searched. Every range is checked against the method's typed signature.

Outputs, in ``<runs>/<study name>`` (``tune-<recipe>-<label>`` by default; a directory of another
study is never reused): ``base.yaml`` (the recipe every trial starts from), ``best.yaml`` (a recipe
fragment with the best values), ``trials.csv``, ``study.json``, ``plots/history.png``,
``plots/importance.png``, ``plots/parallel.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from anydistill.catalog import (
    EVALUATOR_INJECTED,
    Recipe,
    build_models,
    load_recipe,
    resolve_recipe_path,
)
from anydistill.core.errors import TrainingError
from anydistill.core.recipe import apply_override, parameters_of, read_yaml
from anydistill.core.rundir import write_atomic
from anydistill.core.teacher import Teacher
from anydistill.registries import EVALUATORS, METHODS
from anydistill.study.outputs import progress_line, write_outputs
from anydistill.study.search_space import (
    TuneError,
    build_space,
    check_space,
    fixed_by_set,
    trial_overrides,
)

# Per family: the per-epoch validation metric reported to the pruner, whether higher is better,
# and the evaluator column scored at the end of a trial (None: the last per-epoch value).
FAMILY_SCORES: dict[str, tuple[str, str, str | None]] = {
    "classifier": ("val/accuracy", "maximize", "accuracy"),
    "dataset": ("val/accuracy", "maximize", "accuracy"),
    "lm": ("val/nll", "minimize", None),
    "diffusion": ("val/loss", "minimize", None),
}
FINISHED = ("COMPLETE", "PRUNED")


class ReportToTrial(L.Callback):
    """Reports ``monitor`` to an Optuna trial after every validation epoch and stops the training
    when the trial's pruner says so (``pruned_at`` then holds the epoch).

    ``trial`` needs ``report(value, step)`` and ``should_prune()`` (an ``optuna.Trial``).
    """

    def __init__(self, trial: Any, monitor: str):
        self.trial, self.monitor = trial, monitor
        self.last: float | None = None
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        self.last = value
        if not math.isfinite(value):
            return  # Optuna refuses NaN reports; a diverged run fails on its loss instead
        self.trial.report(value, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True  # Lightning finishes this epoch's bookkeeping, then stops


@dataclass
class TuneResult:
    """What a finished ``tune`` call leaves: its directory, the study, the best values."""

    run_dir: Path
    study: Any  # optuna.Study
    best_value: float | None
    best_params: dict[str, Any]  # search-space key -> value ("temperature", "optimizer.lr")
    best_overrides: list[str]  # the same as --set assignments


# ---------------------------------------------------------------------------------------------
# Training one method


def fit_method(recipe: Recipe, label: str, datamodule: Any, teacher: Teacher | None,
               callbacks: list[L.Callback] = ()) -> Any:
    """Train method ``label`` of ``recipe`` (seeded with the recipe's seed) and return it.

    No checkpoints, logs or progress bars: a trial is thrown away unless it is the best, and the
    best is retrained from ``best.yaml`` when it matters.
    """
    component = recipe.methods[label]
    L.seed_everything(recipe.seed, verbose=False)
    student_model, teacher_model = build_models(recipe.data, recipe.student, recipe.teacher, datamodule)
    model = teacher_model if component.target.trains == "teacher" else student_model
    method = component.target(student=model, teacher=teacher if component.target.needs_teacher else None,
                              optimizer=component.optimizer or recipe.optimizer, **component.kwargs)
    spec = recipe.trainer
    trainer = L.Trainer(
        **spec.hardware(),
        max_epochs=component.max_epochs or spec.max_epochs,
        max_steps=spec.max_steps,
        accumulate_grad_batches=spec.accumulate_grad_batches,
        gradient_clip_val=spec.gradient_clip_val,
        limit_train_batches=spec.limit_train_batches,
        deterministic=spec.deterministic,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=list(callbacks),
    )
    datamodule.attach_signals({})
    if hasattr(datamodule, "use_unlabelled"):  # with data.labelled_count: every row, or the labelled ones
        datamodule.use_unlabelled(component.target.unlabelled)
    if component.target.own_loop:
        method.attach_data(datamodule)
        trainer.fit(method)
    else:
        trainer.fit(method, datamodule=datamodule)
    return method


# ---------------------------------------------------------------------------------------------
# The study


def _study_dir(root: Path, name: str, identity: dict[str, str]) -> Path:
    """``root/name`` if free or holding this study (same storage and name), else ``name-2``..."""
    candidate, n = root / name, 1
    while candidate.exists():
        marker = candidate / "study.json"
        try:
            if {k: json.loads(marker.read_text()).get(k) for k in identity} == identity:
                return candidate
        except (OSError, ValueError):
            pass
        n += 1
        candidate = root / f"{name}-{n}"
    return candidate


def _reduced_recipe(path: Path, label: str, overrides: list[str]) -> tuple[dict[str, Any], str | None, list[str]]:
    """The recipe's raw mapping with only method ``label`` and the method that trains its teacher
    (if any), the label of that teacher method, and the problems found."""
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("methods"), dict):
        return {}, None, [f"{path}: a recipe must be a mapping with a 'methods' section."]
    problems = [p for p in (apply_override(raw, a) for a in overrides) if p]
    methods = raw["methods"]
    if label not in methods:
        return {}, None, problems + [f"--method {label}: the recipe has no method '{label}'; its methods are: {', '.join(map(str, methods))}."]
    kept: dict[str, Any] = {}
    teacher_label = None
    target = METHODS.get(label) if label in METHODS.names() else None
    has_checkpoint = isinstance(raw.get("teacher"), dict) and raw["teacher"].get("checkpoint")
    if (target is None or target.trains != "teacher") and not has_checkpoint:  # a checkpoint teacher is used as is
        for other, entry in methods.items():
            try:
                other_target = METHODS.get(str(other))
            except LookupError:
                continue  # load_recipe reports it, if it is kept; it is not
            if other_target.trains == "teacher" and other != label:
                kept[other], teacher_label = entry, str(other)
                break
    kept[label] = methods[label]
    raw["methods"] = kept
    return raw, teacher_label, problems


def _load_raw(raw: dict[str, Any], overrides: list[str] = ()) -> Recipe:
    """``load_recipe`` on an in-memory mapping (through a temporary file: the loader reads files)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return load_recipe(str(path), list(overrides))


def load_method_recipe(recipe: str, label: str, overrides: list[str] = ()) -> tuple[Recipe, str | None]:
    """``recipe`` with ``overrides`` and only method ``label`` (plus the method training its teacher,
    whose label is returned, unless ``teacher.checkpoint`` is set): what a study trains.

    Raises:
        TuneError, RecipeError: every problem at once.
    """
    raw, teacher_label, problems = _reduced_recipe(resolve_recipe_path(recipe), label, list(overrides))
    if problems:
        raise TuneError("\n".join(problems))
    return _load_raw(raw), teacher_label


def _fingerprint(resolved: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tune(
    recipe: str,
    label: str,
    trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    overrides: list[str] = (),
    spaces: list[str] = (),
    runs: str | Path = "runs",
    printer: Any = None,
) -> TuneResult:
    """Run (or continue) the study and write its outputs; see the module docstring.

    Args:
        recipe: a recipe file or shipped name.
        label: the method to tune (a key of the recipe's ``methods``).
        trials: total number of finished (complete or pruned) trials the study should hold.
        storage: an Optuna storage URL; default ``sqlite:///<runs>/tune.db``.
        study_name: default ``tune-<recipe name>-<label>``.
        overrides: ``--set`` assignments applied to the recipe before anything else.
        spaces: ``--space`` arguments.
        runs: root of run directories.
        printer: called with each progress line (default: rich's console).

    Raises:
        TuneError, RecipeError: every problem found before anything is written.
    """
    import optuna

    if trials < 1:
        raise TuneError(f"--trials must be >= 1, got {trials}.")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if printer is None:
        from rich.console import Console

        printer = Console(highlight=False, soft_wrap=True).print

    # 1. Validate everything before writing anything.
    path = resolve_recipe_path(recipe)
    raw, teacher_label, problems = _reduced_recipe(path, label, list(overrides))
    if problems:
        raise TuneError("\n".join(problems))
    try:
        method_cls = METHODS.get(label)
    except LookupError as error:
        raise TuneError(f"--method {label}: {error}") from None
    family = method_cls.family
    monitor, direction, metric = FAMILY_SCORES.get(family, ("val/loss", "minimize", None))
    evaluator_cls = EVALUATORS.get(family) if family in EVALUATORS.names() else None
    scores_with_evaluator = metric is not None and evaluator_cls is not None and "score_split" in parameters_of(evaluator_cls, EVALUATOR_INJECTED)
    if scores_with_evaluator:
        raw.setdefault("evaluation", {})
        if not isinstance(raw["evaluation"], dict):
            raw["evaluation"] = {}
        raw["evaluation"]["score_split"] = "val"  # the only split a study may score on
    full = _load_raw(raw)
    space = build_space(method_cls, label, list(spaces), fixed=fixed_by_set(overrides, label))
    if not space:
        raise TuneError(f"the search space of '{label}' is empty (every parameter is fixed or off); give one with --space KEY=LOW:HIGH.")

    # 2. The study's directory and storage.
    root = Path(runs)
    name = study_name or f"tune-{full.name}-{label}"
    if storage is None:
        root.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{root / 'tune.db'}"
    elif storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    run_dir = _study_dir(root, name, {"storage": storage, "study_name": name})
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    identity = {"storage": storage, "study_name": name, "recipe": str(path), "method": label}

    # 3. The data (set up once: trials change only method and optimizer settings) and the teacher.
    datamodule = full.data.target(**full.data.kwargs)
    datamodule.setup()
    teacher_info: dict[str, Any] = {}
    if teacher_label is not None:
        weights = run_dir / "teacher" / "model.safetensors"
        if not weights.is_file():
            printer(f"training the teacher ('{teacher_label}') once for this study...")
            started = time.perf_counter()
            trained = fit_method(full, teacher_label, datamodule, None)
            from safetensors.torch import save_file

            weights.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in trained.student.state_dict().items()}, str(weights))
            teacher_info = {"trained_s": round(time.perf_counter() - started, 2)}
        raw = {**raw, "methods": {label: raw["methods"][label]},
               "teacher": {**{k: v for k, v in (raw.get("teacher") or {}).items() if k != "checkpoint"}, "checkpoint": str(weights)}}
        teacher_info["checkpoint"] = str(weights)
    base = _load_raw(raw)
    base_path = run_dir / "base.yaml"
    write_atomic(base_path, f"# The recipe every trial of study {name} starts from (tune {path} --method {label}).\n"
                 + yaml.safe_dump(base.resolved, sort_keys=False))
    from anydistill.runner import build_teacher

    _, pretrained = build_models(base.data, base.student, base.teacher, datamodule)
    teacher = build_teacher(base, pretrained) if method_cls.needs_teacher else None
    evaluator = None
    if scores_with_evaluator:
        evaluator = base.evaluation.target(data=datamodule, student_spec=base.resolved.get("student"), data_name=base.data.name,
                                           **base.evaluation.kwargs)
    if teacher is not None and evaluator is not None and metric is not None:
        teacher_info[f"val_{metric}"] = evaluator.evaluate(teacher.model, teacher, "teacher").get(metric)

    # 4. The Optuna study: resumed from its storage when it exists.
    study = optuna.create_study(
        study_name=name, storage=storage, direction=direction, load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    fingerprint = _fingerprint(base.resolved | {"teacher": {k: v for k, v in (base.resolved.get("teacher") or {}).items() if k != "checkpoint"}})
    earlier = study.user_attrs.get("identity")
    if earlier is not None and (earlier.get("method"), study.user_attrs.get("fingerprint")) != (label, fingerprint):
        raise TuneError(
            f"the study '{name}' in {storage} was started for method '{earlier.get('method')}' of another recipe or with other "
            f"--set values; continue it with the same arguments, or start a new one with --study-name."
        )
    if earlier is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("fingerprint", fingerprint)
    write_atomic(run_dir / "study.json", json.dumps({**identity, "direction": direction, "monitor": monitor,
                                                     "metric": metric or monitor, "split": "val",
                                                     "space": {k: v.describe() for k, v in space.items()},
                                                     "teacher": teacher_info}, indent=2) + "\n")

    def objective(trial: optuna.Trial) -> float:
        params = {key: dimension.suggest(trial, key) for key, dimension in space.items()}
        trial_recipe = load_recipe(str(base_path), trial_overrides(label, params))
        reporter = ReportToTrial(trial, monitor)
        method = fit_method(trial_recipe, label, datamodule, teacher, [reporter])
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
        if evaluator is not None:
            value = evaluator.evaluate(method.student, teacher, label)[metric]
        elif reporter.last is not None:
            value = reporter.last
        else:
            raise TuneError(f"method '{label}' logged no '{monitor}' during validation, so a trial has no score.")
        trial.set_user_attr("epochs", method.current_epoch)
        return float(value)

    finished = _count(study)
    if finished >= trials:
        printer(f"study {name} already holds {finished} finished trials (>= --trials {trials}); writing its outputs.")
    attempts = 0
    while finished < trials and attempts < 2 * trials:
        attempts += 1
        study.optimize(objective, n_trials=1, catch=(TrainingError,), gc_after_trial=False)
        last = study.trials[-1]
        finished = _count(study)
        printer(progress_line(study, last, finished, trials, metric or monitor))
        write_outputs(study, run_dir, label, space, metric or monitor, plots=False, base_path=base_path)
    if finished < trials:
        raise TuneError(f"{attempts} trials ran but only {finished} finished (the others failed: see trials.csv); "
                        "narrow the search space (e.g. a lower --space optimizer.lr range).")
    best_params, best_value = write_outputs(study, run_dir, label, space, metric or monitor, plots=True, base_path=base_path)
    return TuneResult(run_dir, study, best_value, best_params, trial_overrides(label, best_params))


def _count(study: Any) -> int:
    return sum(t.state.name in FINISHED for t in study.trials)


__all__ = ["ReportToTrial", "TuneError", "TuneResult", "build_space", "check_space", "fit_method", "tune"]
