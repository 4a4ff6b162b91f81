"""A diffusers model from a local folder (the user's own checkpoint) as a `Denoiser`.

``diffusers-folder {path, subfolder?}`` loads any diffusers ``ModelMixin`` whose forward is
``model(sample, timestep, class_labels=...)`` (``UNet2DModel`` and the like) with
``from_pretrained(local_files_only=True)``: nothing is downloaded. How the network is read (noise
schedule, prediction kind, time input) comes from the ``scheduler_config.json`` of the
pipeline it was trained in, found beside the model (``path/subfolder/scheduler_config.json``) or in
the pipeline's ``scheduler/`` folder (``path/scheduler/`` when ``subfolder`` is given, else the
parent's ``scheduler/``), so a recipe never restates it:

==============================================  =========================================
scheduler                                       schedule, prediction, network time input
==============================================  =========================================
``DDPMScheduler``, ``DDIMScheduler`` and the    ``ddpm`` (`DDPMSchedule` of the betas:
other beta-schedule samplers (PNDM, Euler,      linear / scaled_linear / squaredcos_cap_v2);
DPM-Solver, UniPC, ...)                         ``epsilon`` -> eps, ``v_prediction`` -> v,
                                                ``sample`` -> x0; step index ``t (N - 1)``
``FlowMatchEulerDiscreteScheduler``             ``rectified-flow``, velocity (``noise - x0``);
                                                ``t * num_train_timesteps``
==============================================  =========================================

Anything else (another scheduler class, trained or zero-terminal-SNR betas, another prediction
type) is refused in one line naming the class or setting. This module knows nothing of training:
the names go into the `Denoiser` and the diffusion family builds the schedule from them
(``anydistill.diffusion.common.schedule_of``). The same builder initialises a student from the
teacher's weights; an export then also writes ``diffusers/`` (``save_pretrained``), which
``UNet2DModel.from_pretrained`` reloads.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from anydistill.core.errors import first_line
from anydistill.models.flow_denoisers import Denoiser

BETA_SCHEDULERS = frozenset({
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "UniPCMultistepScheduler", "DEISMultistepScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
})
FLOW_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"})
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def model_folder(path: str, subfolder: str | None) -> Path:
    """The folder holding the model's ``config.json`` (one line naming the fix when there is none)."""
    root = Path(path)
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise ValueError(f"diffusers-folder: no such folder '{folder}'. Point path (and subfolder) at the model's local folder "
                         "written by save_pretrained; nothing is downloaded.")
    if not (folder / "config.json").is_file():
        models = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
        if models:
            hint = f" It is a pipeline folder: add `subfolder: {models[0]}` (its model folders: {', '.join(models)})."
        elif (folder / "model_index.json").is_file():
            hint = " It is a pipeline folder: add `subfolder: unet` (or the model's folder name)."
        else:
            hint = " Save the model there with model.save_pretrained(folder)."
        raise ValueError(f"diffusers-folder: '{folder}' has no config.json.{hint}")
    return folder


def read_json(file: Path, where: str = "diffusers-folder") -> dict[str, Any]:
    """The JSON object in ``file`` (one line naming the fix when it is not one; ``where`` names the builder)."""
    try:
        value = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{where}: {file} is not readable JSON ({type(error).__name__}); re-save it with save_pretrained.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {file} does not hold a JSON object; re-save it with save_pretrained.")
    return value


def model_class(folder: Path) -> type:
    """The diffusers ``ModelMixin`` class named by ``folder/config.json``'s ``_class_name``."""
    config = read_json(folder / "config.json")
    name = config.get("_class_name")
    if not isinstance(name, str):
        what = (f"a transformers config ({', '.join(config.get('architectures') or [config.get('model_type', '?')])})"
                if "model_type" in config or "architectures" in config else "not a diffusers model config")
        raise ValueError(f"diffusers-folder: {folder / 'config.json'} is {what}: it has no _class_name. Give the folder of a "
                         "diffusers model (UNet2DModel...) saved with save_pretrained; use hf-causal-lm for transformers models.")
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ValueError(f"diffusers-folder: {folder / 'config.json'} names {name!r}, which is not a diffusers model class "
                         f"(diffusers {diffusers.__version__}); give the folder of a ModelMixin such as UNet2DModel.")
    required = [p.name for p in list(inspect.signature(cls.forward).parameters.values())[3:]
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise ValueError(f"diffusers-folder: {name} needs {', '.join(required)} besides the noisy sample and the timestep "
                         "(e.g. text embeddings); only models called as model(sample, timestep, class_labels=...) can be "
                         "distilled here, such as UNet2DModel; for a text-to-image pipeline folder use diffusers-pipeline.")
    return cls


def scheduler_file(folder: Path, root: Path, subfolder: str | None, where: str = "diffusers-folder") -> Path:
    """Where the model's scheduler config is: beside it, else the pipeline's ``scheduler/``."""
    candidates = [folder / "scheduler_config.json",
                  (root if subfolder else folder.parent) / "scheduler" / "scheduler_config.json"]
    for file in candidates:
        if file.is_file():
            return file
    raise ValueError(f"{where}: no scheduler_config.json for '{folder}' (looked at {', '.join(str(c) for c in candidates)}). "
                     "Save the training scheduler there with scheduler.save_pretrained(folder): it says which noise schedule "
                     "and prediction the model was trained with.")


def schedule_from_scheduler(config: dict[str, Any], file: Path, where: str = "diffusers-folder") -> tuple[str, dict[str, Any], str, float]:
    """``(schedule name, schedule options, prediction kind, time scale)`` for a scheduler config.

    The time scale maps the schedule's ``t`` in ``[0, 1]`` to the network's timestep input; ``where``
    names the builder in messages (``diffusers-pipeline`` reads its pipeline's scheduler with it too).

    Raises:
        ValueError: a scheduler class or setting with no mapping, named in one line.
    """
    name = config.get("_class_name")
    steps = config.get("num_train_timesteps", 1000)
    if not (isinstance(steps, int) and steps >= 2):
        raise ValueError(f"{where}: {file} has num_train_timesteps {steps!r}; it must be an int >= 2.")
    if name in FLOW_SCHEDULERS:
        if config.get("invert_sigmas"):
            raise ValueError(f"{where}: {file}: {name} with invert_sigmas true has no mapping here; only "
                             "data-at-0, noise-at-1 flow matching is read.")
        return "rectified-flow", {}, "velocity", float(steps)
    if name not in BETA_SCHEDULERS:
        known = ", ".join(sorted(BETA_SCHEDULERS | FLOW_SCHEDULERS))
        raise ValueError(f"{where}: {file} names the scheduler {name!r}, which has no mapping to a noise schedule here; "
                         f"known: {known}. Save the model's training scheduler (e.g. DDPMScheduler) instead.")
    problems = []
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in BETA_SCHEDULES:
        problems.append(f"beta_schedule {beta_schedule!r} (known: {', '.join(BETA_SCHEDULES)})")
    if config.get("trained_betas") is not None:
        problems.append("trained_betas (an explicit beta list)")
    if config.get("rescale_betas_zero_snr"):
        problems.append("rescale_betas_zero_snr true (zero terminal SNR)")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        problems.append(f"prediction_type {prediction!r} (known: {', '.join(PREDICTIONS)})")
    if config.get("timestep_type", "discrete") != "discrete":
        problems.append(f"timestep_type {config.get('timestep_type')!r}")
    if problems:
        raise ValueError(f"{where}: {file}: {name} with {'; '.join(problems)} has no mapping to a noise schedule here.")
    options = {"num_train_timesteps": steps, "beta_start": float(config.get("beta_start", 0.0001)),
               "beta_end": float(config.get("beta_end", 0.02)), "beta_schedule": beta_schedule}
    return "ddpm", options, PREDICTIONS[prediction], float(steps - 1)


class DiffusersModel(nn.Module):
    """A diffusers model behind the zoo's denoiser signature ``(x_t, t_in, cond)``: the network sees
    ``t_in * time_scale`` as its timestep. A model with class embeddings gets ``cond`` as its labels
    when it is run conditionally (``num_classes > 0``) and ``null_label`` otherwise (``cond=None``,
    or a conditional model run unconditionally). Kept under the attribute ``unet`` so the diffusion
    evaluator exports it with ``save_pretrained``."""

    def __init__(self, unet: nn.Module, num_classes: int, time_scale: float, null_label: int | None):
        super().__init__()
        self.unet, self.num_classes, self.time_scale, self.null_label = unet, num_classes, time_scale, null_label

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.num_classes > 0 else None

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None = None) -> Tensor:
        import torch

        if t_in.ndim == 0:
            t_in = t_in.expand(x_t.shape[0])
        kwargs = {}
        if self.null_label is not None:
            use_cond = self.num_classes > 0 and cond is not None
            kwargs["class_labels"] = cond if use_cond else torch.full(
                (x_t.shape[0],), self.null_label, dtype=torch.long, device=x_t.device)
        out = self.unet(x_t, t_in * self.time_scale, **kwargs)
        return out.sample if hasattr(out, "sample") else out[0]


def diffusers_folder(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    path: str,
    subfolder: str | None = None,
    conditional: bool = True,
) -> Denoiser:
    """A `Denoiser` around the diffusers model saved in ``path`` (or ``path/subfolder``), read with
    the schedule and prediction of its scheduler config (module docstring).

    Args:
        input_shape, num_classes: the data's (injected): the model must take ``[C, H, W]`` inputs
            of this shape; a class-conditional model must have ``num_classes + 1`` class
            embeddings (the last is the null class of classifier-free guidance, as
            ``diffusers-unet`` builds them).
        path: the local folder (a model folder or a pipeline folder).
        subfolder: the model's folder inside a pipeline folder (e.g. ``unet``).
        conditional: use the model's class embeddings; ``false`` runs it unconditionally (every
            example gets the null class).

    Raises:
        ValueError: one line naming the fix (no config, not a diffusers model, no scheduler
            config or an unknown one, shapes or classes that do not fit the data).
    """
    root = Path(path)
    folder = model_folder(path, subfolder)
    cls = model_class(folder)
    file = scheduler_file(folder, root, subfolder)
    schedule, options, prediction, time_scale = schedule_from_scheduler(read_json(file), file)
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - diffusers raises many types for a broken folder
        first = first_line(error)
        raise ValueError(f"diffusers-folder: cannot load {cls.__name__} from '{folder}' ({first}); re-save it with save_pretrained.") from None
    config = model.config
    channels, size = config.get("in_channels"), config.get("sample_size")
    expected = tuple(input_shape)
    if len(expected) != 3 or channels != expected[0] or config.get("out_channels", channels) != expected[0] or (
            isinstance(size, int) and size != expected[-1]):
        raise ValueError(f"diffusers-folder: {cls.__name__} in '{folder}' takes {channels}-channel {size}x{size} samples but the data "
                         f"are {list(expected)}; resize the data (data.size) or give a model of that shape.")
    embeds = config.get("num_class_embeds") or 0
    classes = 0
    if embeds and conditional:
        if embeds != num_classes + 1:
            raise ValueError(f"diffusers-folder: {cls.__name__} in '{folder}' has {embeds} class embeddings but the data have "
                             f"{num_classes} classes; it needs num_classes + 1 (the last is the null class), or set conditional: false.")
        classes = num_classes
    null_label = embeds - 1 if embeds else None
    denoiser = Denoiser(DiffusersModel(model, classes, time_scale, null_label), schedule, prediction, "none")
    denoiser.schedule_options = options  # the schedule's parameters: read by diffusion.common.schedule_of
    return denoiser

