"""Drawing samples from any model a diffusion method trains, as its ``sampling`` spec says.

A method writes on its student (a `anydistill.models.flow_denoisers.Denoiser`) how it is sampled:

====================  ================================================================  ============
``sampler``           what one draw with ``num_steps`` does                              NFE
====================  ================================================================  ============
``euler``/``heun``/   the probability-flow ODE of the model's prediction, uniform grid  N (2N-1 Heun)
``ddim``
``multistep``         predict x0, re-noise to the next time (consistency models, DMD2)    K
``one-step``          the x0 predicted from pure noise at ``t_max``                       1
====================  ================================================================  ============

Other keys: ``steps`` (the step counts the model is meant for, e.g. ``[1, 2, 4]``), ``timesteps``
(for ``multistep``: ``{"K": [t_1, ..., t_K]}``; default the uniform grid's first K times) and
``cfg`` (guidance applied at sampling; distilled students have it baked in: ``None``). A model with
no ``sampling`` is a plain denoiser (a teacher) and is sampled with an ODE solver.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from anydistill.diffusion.common import ODE_SAMPLERS, ode_sampler, schedule_of
from anydistill.diffusion.samplers import MultistepSampler, OneStepSampler, SampleResult, sample, time_grid
from anydistill.diffusion.teacher import network_output

SAMPLERS = (*ODE_SAMPLERS, "multistep", "one-step")


def model_fn(model: nn.Module, cond: Tensor | None, cfg: float | None = None):
    """``fn(x_t, t) -> native prediction`` of a `Denoiser`, guided by ``cfg`` when given and conditional."""
    schedule = schedule_of(model)
    null = getattr(model, "null_class", None)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        if cfg is None or cond is None or null is None:
            return network_output(model, schedule, x, t, cond, model.preconditioning)
        both = network_output(model, schedule, torch.cat([x, x]), torch.cat([t, t]),
                              torch.cat([cond, torch.full_like(cond, null)]), model.preconditioning)
        out_c, out_u = both.chunk(2)
        return out_u + cfg * (out_c - out_u)

    return fn


def multistep_times(model: nn.Module, num_steps: int, sampling: dict[str, Any]) -> list[float]:
    """The K evaluation times of a ``multistep`` model: its own list for K, else the uniform grid's."""
    given = (sampling.get("timesteps") or {}).get(str(num_steps))
    if given is not None:
        return [float(t) for t in given]
    return time_grid(schedule_of(model), num_steps)[:-1].tolist()


@torch.no_grad()
def generate(
    model: nn.Module,
    z: Tensor,
    cond: Tensor | None,
    num_steps: int,
    *,
    sampling: dict[str, Any] | None = None,
    cfg: float | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Samples of ``model`` from noise ``z`` ``[N, ...]`` (std of the schedule's noise).

    Args:
        model: a `Denoiser` (eval mode is set and restored here).
        z: initial noise ``[N, ...]``.
        cond: labels ``[N]`` or ``None``.
        num_steps: steps of the sampler (``NFE`` = ``num_steps``, Heun ``2 num_steps - 1``).
        sampling: the model's spec (default ``model.sampling``, then an Euler ODE).
        cfg: guidance weight for a plain denoiser (ignored when the spec sets its own ``cfg``).
        generator: fresh noise of the ``multistep`` sampler.
        return_trajectory: keep the states (see `sample`).
    """
    spec = sampling if sampling is not None else (getattr(model, "sampling", None) or {"sampler": "euler"})
    name = spec.get("sampler", "euler")
    if name not in SAMPLERS:
        raise ValueError(f"The sampler of a model must be one of {', '.join(SAMPLERS)}. Got {name!r}.")
    guidance = spec["cfg"] if "cfg" in spec else cfg
    schedule = schedule_of(model)
    if name == "one-step":
        if num_steps != 1:
            raise ValueError(f"A one-step model is sampled with num_steps=1. Got {num_steps}.")
        sampler = OneStepSampler(schedule)
    elif name == "multistep":
        sampler = MultistepSampler(schedule, multistep_times(model, num_steps, spec))
    else:
        sampler = ode_sampler(name, schedule, spec.get("spacing", "uniform"))
    was_training = model.training
    model.eval()
    try:
        return sample(model_fn(model, cond, guidance), sampler, z, num_steps, kind=model.prediction,
                      generator=generator, return_trajectory=return_trajectory)
    finally:
        model.train(was_training)
