"""Samplers, one algorithm per file; the protocol, the grid and the sampling loop are in `base`.

``from anydistill.diffusion.samplers import DDIMSampler, sample, time_grid`` keeps working: this
package re-exports every public name of its modules.
"""

from anydistill.diffusion.samplers.base import (
    SPACINGS,
    Sampler,
    SampleResult,
    Spacing,
    grid_problems,
    sample,
    time_grid,
)
from anydistill.diffusion.samplers.ddim import DDIMSampler
from anydistill.diffusion.samplers.euler import EulerSampler
from anydistill.diffusion.samplers.heun import HeunSampler
from anydistill.diffusion.samplers.multistep import MultistepSampler
from anydistill.diffusion.samplers.one_step import OneStepSampler
from anydistill.diffusion.samplers.stochastic import StochasticSampler

__all__ = [
    "SPACINGS",
    "DDIMSampler",
    "EulerSampler",
    "HeunSampler",
    "MultistepSampler",
    "OneStepSampler",
    "SampleResult",
    "Sampler",
    "Spacing",
    "StochasticSampler",
    "grid_problems",
    "sample",
    "time_grid",
]
