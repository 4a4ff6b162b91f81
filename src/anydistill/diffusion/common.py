"""What every diffusion method and the diffusion evaluator share: reading a `Denoiser` (its schedule
and prediction kind), the frozen teacher as a `DiffusionTeacher`, predictions of a trainable
network in any kind, labels for conditional sampling, EMA updates and teacher noise -> sample pairs.

The engine hands methods a core `Teacher`; `diffusion_teacher` wraps the same network (no copy)
with the schedule and prediction kind its recipe section names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from anydistill.core.teacher import Teacher
from anydistill.diffusion.ddpm_schedule import DDPMSchedule
from anydistill.diffusion.samplers import DDIMSampler, EulerSampler, HeunSampler, Sampler, sample
from anydistill.diffusion.schedules import EDM, NoiseSchedule, RectifiedFlow, TrigFlow, VPCosine
from anydistill.diffusion.teacher import DiffusionTeacher, network_output

SCHEDULES: dict[str, Callable[..., NoiseSchedule]] = {
    "rectified-flow": RectifiedFlow,
    "vp-cosine": VPCosine,
    "edm": EDM,
    "trigflow": TrigFlow,
    "ddpm": DDPMSchedule,  # a DDPM-trained diffusers model's betas (diffusers-folder)
}
ODE_SAMPLERS = ("euler", "heun", "ddim")


def check_denoiser(model: object, owner: str) -> None:
    """Refuse a model that does not say how it is read (a `Denoiser` from the zoo's builders)."""
    if not all(hasattr(model, a) for a in ("schedule", "prediction", "preconditioning")):
        raise TypeError(
            f"{owner} needs a denoiser that names its schedule and prediction kind: build it with "
            f"`name: mlp-denoiser` or `name: conv-denoiser`. Got {type(model).__name__}."
        )


def pure_noise_problem(model: nn.Module, role: str) -> str | None:
    """Why a `Denoiser` cannot give x0 from pure noise, or None: an eps prediction on a schedule whose
    ``alpha(t_max)`` is 0 (every sampler and one-step generator starts there, and x0 = (x_t - sigma eps) / alpha)."""
    if getattr(model, "prediction", None) != "eps" or getattr(model, "preconditioning", "none") != "none":
        return None
    schedule = schedule_of(model)
    if float(schedule.alpha(torch.tensor(float(schedule.t_max)))) != 0:
        return None
    return (f"{role}: an eps-prediction model on the {model.schedule} schedule gives no x0 at t_max, where alpha = 0 (pure noise) and "
            "x0 = (x_t - sigma eps) / alpha: build it with prediction: v, x0 or velocity (or use a schedule whose alpha(t_max) > 0, ddpm).")


def schedule_of(model: nn.Module) -> NoiseSchedule:
    """The `NoiseSchedule` a `Denoiser` was built for; ``schedule_options`` (set by builders whose
    schedule has parameters, e.g. a diffusers folder's betas) are its constructor's arguments."""
    check_denoiser(model, "schedule_of")
    return SCHEDULES[model.schedule](**(getattr(model, "schedule_options", None) or {}))


def diffusion_teacher(teacher: Teacher | DiffusionTeacher | nn.Module) -> DiffusionTeacher:
    """The run's frozen teacher (a core `Teacher` or a bare `Denoiser`) as a `DiffusionTeacher`."""
    if isinstance(teacher, DiffusionTeacher):
        return teacher
    model = teacher.model if isinstance(teacher, Teacher) else teacher
    check_denoiser(model, "the diffusion teacher")
    return DiffusionTeacher(model, schedule_of(model), model.prediction, preconditioning=model.preconditioning,
                            name=getattr(teacher, "name", "teacher"))


def predict(model: nn.Module, x_t: Tensor, t: Tensor, cond: Tensor | None, kind: str) -> Tensor:
    """A trainable `Denoiser`'s prediction at ``(x_t [B, ...], t [B])`` as ``kind``, with gradients."""
    schedule = schedule_of(model)
    out = network_output(model, schedule, x_t, t, cond, model.preconditioning)
    return schedule.convert(out, x_t, t.to(x_t.dtype), model.prediction, kind)


def labels_for(num: int, num_classes: int, device: torch.device | str = "cpu") -> Tensor | None:
    """``[num]`` labels cycling through the classes (``None`` for unconditional data)."""
    return torch.arange(num, device=device) % num_classes if num_classes > 0 else None


def model_classes(model: nn.Module) -> int:
    """Number of classes a denoiser is conditioned on (0: unconditional)."""
    null = getattr(model, "null_class", None)
    return int(null) if null is not None else 0


def drop_labels(cond: Tensor | None, probability: float, null_class: int | None) -> Tensor | None:
    """Labels replaced by the null class with ``probability`` (classifier-free guidance training)."""
    if cond is None or null_class is None or probability <= 0:
        return cond
    drop = torch.rand(cond.shape, device=cond.device) < probability
    return torch.where(drop, torch.full_like(cond, null_class), cond)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, parameter by parameter (buffers copied)."""
    for p_target, p_source in zip(target.parameters(), source.parameters()):
        p_target.lerp_(p_source.detach(), 1 - decay)
    for b_target, b_source in zip(target.buffers(), source.buffers()):
        b_target.copy_(b_source)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with frozen parameters (a target or round teacher)."""
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def ode_sampler(name: str, schedule: NoiseSchedule, spacing: str = "uniform") -> Sampler:
    """One of the deterministic ODE samplers by name: ``euler``, ``heun`` or ``ddim`` (eta 0)."""
    if name == "euler":
        return EulerSampler(schedule, spacing=spacing)
    if name == "heun":
        return HeunSampler(schedule, spacing=spacing)
    if name == "ddim":
        return DDIMSampler(schedule, spacing=spacing)
    raise ValueError(f"The ODE sampler must be one of {', '.join(ODE_SAMPLERS)}. Got {name!r}.")


@torch.no_grad()
def teacher_pairs(
    teacher: DiffusionTeacher,
    z: Tensor,
    cond: Tensor | None,
    num_steps: int,
    *,
    solver: str = "heun",
    cfg: float | None = None,
    batch_size: int = 2048,
) -> Tensor:
    """The teacher's ODE solution from each noise: ``ODE_teacher(z)``, ``[N, ...]`` like ``z``.

    The noise -> sample coupling that reflow (Liu et al. 2022) retrains on and DMD's regression loss
    (Yin et al. 2024) uses. ``z`` has the schedule's noise std; ``cond`` is ``[N]`` or ``None``;
    ``cfg`` the guidance weight (``None``: none).
    """
    outputs = []
    for start in range(0, z.shape[0], batch_size):
        zb = z[start : start + batch_size]
        cb = cond[start : start + batch_size] if cond is not None else None
        guidance = cfg if cb is not None else None

        def fn(x: Tensor, t: Tensor, cb=cb, guidance=guidance) -> Tensor:
            return teacher.predict(x, t, cb, kind="velocity", cfg=guidance)

        result = sample(fn, ode_sampler(solver, teacher.schedule), zb, num_steps, kind="velocity")
        outputs.append(result.x0)
    return torch.cat(outputs)


class TensorRows(torch.utils.data.Dataset):
    """Rows of equally long tensors served a batch at a time: ``{name: tensor[index], "index": index}``
    (for methods that train on data they made themselves, such as teacher pairs)."""

    def __init__(self, **tensors: Tensor):
        self.tensors = tensors
        self.length = next(iter(tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.length

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {**{name: value[index] for name, value in self.tensors.items()}, "index": index}


def rows_loader(rows: TensorRows, batch_size: int, seed: int, trainer) -> torch.utils.data.DataLoader:
    """A loader over ``rows`` shuffled by (seed, epoch) and sharded by rank, as the zoo's data modules are."""
    from anydistill.data.tensor_data import EpochShuffleSampler

    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    sampler = EpochShuffleSampler(len(rows), seed, True, rank, world)
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=lambda batch: batch)
