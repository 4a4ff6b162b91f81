r"""``analytic-mixture``: the exact denoiser of a toy Gaussian mixture, usable as a recipe teacher.

For data :math:`x_0 \sim \sum_k \pi_k\, \mathcal{N}(\mu_k, s^2 I)` noised as
:math:`x_t = \alpha_t x_0 + \sigma_t \epsilon` (any `NoiseSchedule`), the posterior mean is

.. math::

    \mathbb{E}[x_0 \mid x_t] = \sum_k r_k(x_t)\Big(\mu_k + \frac{\alpha_t s^2}{\alpha_t^2 s^2 + \sigma_t^2}
        (x_t - \alpha_t \mu_k)\Big),\qquad
    r_k \propto \pi_k\, \mathcal{N}\big(x_t;\ \alpha_t \mu_k,\ (\alpha_t^2 s^2 + \sigma_t^2) I\big),

the optimum of every denoising objective, so a teacher with no error at all: a method's gap to it
is the method's (optimisation, budget), never the teacher's. The components share one variance, so
the responsibilities are a softmax of :math:`\log \pi_k - \lVert x_t - \alpha_t\mu_k\rVert^2 /
2(\alpha_t^2 s^2 + \sigma_t^2)`.

Class-conditional mixtures (`toy2d-conditional`: one component per class, or 4 sub-modes per class)
give the posterior mean of the class's own components for a label and the whole mixture's for the
null label, so classifier-free guidance
(`DiffusionTeacher`, on this x0 output) is the guided teacher exactly, as a trained one would
approximate it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from anydistill.models.flow_denoisers import Denoiser, ScheduleName

MixtureName = Literal["eight_gaussians", "twenty_five_gaussians", "class_conditional_mixture", "class_submode_mixture"]


class AnalyticMixtureNet(nn.Module):
    r"""``forward(x_t [B, D], t [B], cond [B] | None) -> E[x0 | x_t (, class)] [B, D]`` of an
    equally weighted isotropic Gaussian mixture on ``schedule`` (``t`` is the schedule's own time).

    Args:
        means: ``[K, D]`` component means.
        std: the components' per-axis std ``s``.
        schedule: the `NoiseSchedule` whose ``alpha(t)``, ``sigma(t)`` noise the data.
        classes: ``[K]`` int64, the class of each component (labels ``0..C-1``; ``C`` is the null
            label), or ``None`` for an unconditional mixture.
    """

    def __init__(self, means: Tensor, std: float, schedule, classes: Tensor | None):
        super().__init__()
        self.register_buffer("means", means.detach().clone().double())
        self.register_buffer("classes", None if classes is None else classes.detach().clone().long())
        self.std, self.schedule, self.conditional = float(std), schedule, classes is not None
        self._null = int(classes.max()) + 1 if classes is not None else None

    @property
    def null_class(self) -> int | None:
        """The label meaning "the whole mixture" (classifier-free guidance's unconditional branch)."""
        return self._null

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        x = x_t.double().flatten(1)
        t = t.double().expand(x.shape[0]) if t.dim() == 0 else t.double()
        alpha, sigma = self.schedule.alpha(t).clamp(min=0)[:, None], self.schedule.sigma(t)[:, None]  # [B, 1]
        variance = alpha**2 * self.std**2 + sigma**2  # of x_t given a component
        offset = x[:, None, :] - alpha[:, :, None] * self.means[None]  # [B, K, D]: x_t - alpha mu_k
        logits = -(offset**2).sum(-1) / (2 * variance)  # [B, K]: log r_k up to a constant (equal weights)
        if self.conditional and cond is not None:
            labelled = cond != self.null_class  # a label keeps its own component; the null label all of them
            own = self.classes[None] == cond[:, None]  # [B, K]: the label's own components
            logits = torch.where(labelled[:, None] & ~own, torch.full_like(logits, -math.inf), logits)
        responsibility = logits.softmax(-1)
        posterior = self.means[None] + (alpha * self.std**2 / variance)[:, :, None] * offset  # E[x0 | x_t, k]
        return (responsibility[..., None] * posterior).sum(1).reshape(x_t.shape).to(x_t.dtype)


def analytic_mixture(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    distribution: MixtureName = "eight_gaussians",
    schedule: ScheduleName = "rectified-flow",
) -> Denoiser:
    """The exact x0-denoiser of a toy 2-D mixture (``eight_gaussians``, ``twenty_five_gaussians``, or
    ``class_conditional_mixture`` / ``class_submode_mixture`` with the data's classes) on ``schedule``: a `Denoiser` with
    ``prediction: x0`` and no parameters, for a recipe's ``teacher:`` (no training, no checkpoint).

    Raises:
        ValueError: data that is not 2-D points, or classes that do not match the distribution.
    """
    from anydistill.data.toy2d_distributions import LABELLED, SUBMODES, class_means, mode_std, modes, submode_means
    from anydistill.diffusion.common import SCHEDULES

    conditional = distribution in LABELLED
    if tuple(input_shape) != (2,):
        raise ValueError(f"analytic-mixture is the exact denoiser of the 2-D toy mixtures; the data has shape {tuple(input_shape)}. "
                         "Use toy2d or toy2d-conditional data, or a trained teacher.")
    if conditional != (num_classes > 0):
        fix = ("use distribution: class_conditional_mixture" if num_classes > 0 else "use data: toy2d-conditional")
        raise ValueError(f"analytic-mixture: distribution '{distribution}' {'has' if conditional else 'has no'} classes but the data "
                         f"has {num_classes}: {fix}.")
    if not conditional:
        means, classes = modes(distribution), None
    elif distribution == "class_submode_mixture":
        means, classes = submode_means(num_classes), torch.arange(num_classes).repeat_interleave(SUBMODES)
    else:
        means, classes = class_means(num_classes), torch.arange(num_classes)
    return Denoiser(AnalyticMixtureNet(means, mode_std(distribution), SCHEDULES[schedule](), classes), schedule, "x0", "none")
