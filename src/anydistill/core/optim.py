"""The student's optimizer and learning-rate schedule, built from a recipe's `optimizer` section."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from anydistill.core.recipe import OptimizerSpec


def make_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer the `optimizer` section names (sgd, adam, adamw) over the trainable ``params``,
    at ``lr`` (default the section's): for methods that step several optimizers by hand."""
    params = [p for p in params if p.requires_grad]
    lr = spec.lr if lr is None else lr
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay)


def build_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], total_steps: int) -> dict[str, Any]:
    """A Lightning ``configure_optimizers`` dict for ``params``, stepping the schedule every batch.

    Args:
        spec: the validated `optimizer` section.
        params: the trainable parameters (student and any auxiliary nets, never the teacher).
        total_steps: optimizer steps of the whole run (``trainer.estimated_stepping_batches``).
    """
    optimizer = make_optimizer(spec, params)
    total_steps = max(1, int(total_steps))
    if spec.schedule == "constant":
        return {"optimizer": optimizer}
    if spec.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        milestones = sorted({max(1, int(f * total_steps)) for f in spec.step_milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=spec.step_gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
