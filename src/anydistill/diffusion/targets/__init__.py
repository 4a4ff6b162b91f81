r"""Regression targets and losses of diffusion step distillation, as pure tensor functions, one
method's targets per file (shared argument checks in `checks`).

Each function here is one building block of a method in the step-distillation family: the
progressive-distillation target, the consistency-distillation teacher step and skip
parametrisation, the distribution-matching (DMD) gradient and its surrogate loss, and the
rectified-flow regression. None of them trains, holds state or knows a `LightningModule`: models
come in as plain callables.

Notation (as in `anydistill.diffusion.schedules`): ``x_t = alpha(t) x0 + sigma(t) eps`` on the
schedule's ``[t_min, t_max]`` (data near ``t_min``); shapes are ``[B, ...]`` for data and ``[B]``
(or 0-dim, shared by the batch) for times. Model callables are called as ``fn(x [B, ...], t [B])``
with ``t`` in the dtype it was given (pass float64 times where precision matters); wrap a
`DiffusionTeacher` as ``lambda x, t: teacher.predict(x, t, cond, kind="x0", cfg=w)``.

=====================================  ====================================================
`ddim_step`                            deterministic DDIM update from an ``x0`` prediction
`pd_times`, `progressive_distillation_target`, `pd_weight`
                                       Salimans & Ho (2022), Algorithm 2
`consistency_distillation_pair`        one teacher ODE step ``t_{n+1} -> t_n`` (Song+ 2023)
`consistency_coefficients`, `consistency_parametrisation`
                                       ``f = c_skip x + c_out F`` with ``f(x, t_min) = x``
`pseudo_huber`, `ict_huber_c`          ``sqrt(||a - b||^2 + c^2) - c`` (iCT, RF++)
`dmd_gradient`, `dmd_surrogate_loss`   Yin+ (2024) DMD / DMD2 distribution-matching gradient
`decoupled_dmd_gradient`               Liu+ (2025) DM and CFG-augmentation terms, each at its own time
`rectified_flow_loss`                  ``||v - (noise - x0)||`` (Liu+ 2022; RF++ 2024)
=====================================  ====================================================

Functions that call a teacher (or a fake score) build **targets**: they run under
``torch.no_grad()`` and their results carry no gradient, as in the official code, which detaches
every such target. Losses are computed in at least float32 (DESIGN.md).
"""

from anydistill.diffusion.targets.checks import ModelFn
from anydistill.diffusion.targets.consistency import (
    CD_SOLVERS,
    ICT_HUBER_SCALE,
    consistency_coefficients,
    consistency_distillation_pair,
    consistency_parametrisation,
    ict_huber_c,
    pseudo_huber,
)
from anydistill.diffusion.targets.ddim import ddim_step
from anydistill.diffusion.targets.dmd import REDUCTIONS, decoupled_dmd_gradient, dmd_gradient, dmd_surrogate_loss
from anydistill.diffusion.targets.progressive import (
    PD_WEIGHTINGS,
    pd_times,
    pd_weight,
    progressive_distillation_target,
)
from anydistill.diffusion.targets.rectified_flow import (
    RF_LOSSES,
    RF_WEIGHTINGS,
    rectified_flow_loss,
)

__all__ = [
    "CD_SOLVERS",
    "ICT_HUBER_SCALE",
    "PD_WEIGHTINGS",
    "REDUCTIONS",
    "RF_LOSSES",
    "RF_WEIGHTINGS",
    "ModelFn",
    "consistency_coefficients",
    "consistency_distillation_pair",
    "consistency_parametrisation",
    "ddim_step",
    "decoupled_dmd_gradient",
    "dmd_gradient",
    "dmd_surrogate_loss",
    "ict_huber_c",
    "pd_times",
    "pd_weight",
    "progressive_distillation_target",
    "pseudo_huber",
    "rectified_flow_loss",
]
