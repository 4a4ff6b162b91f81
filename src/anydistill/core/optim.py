"""The student's optimizer and learning-rate schedule, built from a recipe's `optimizer` section."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from anydistill.core.recipe import OptimizerSpec


def build_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], total_steps: int) -> dict[str, Any]:
    """A Lightning ``configure_optimizers`` dict for ``params``, stepping the schedule every batch.

    Args:
        spec: the validated `optimizer` section.
        params: the trainable parameters (student and any auxiliary nets, never the teacher).
        total_steps: optimizer steps of the whole run (``trainer.estimated_stepping_batches``).
    """
    params = [p for p in params if p.requires_grad]
    if spec.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    elif spec.name == "adam":
        optimizer = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    total_steps = max(1, int(total_steps))
    if spec.schedule == "constant":
        return {"optimizer": optimizer}
    if spec.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        milestones = sorted({max(1, int(f * total_steps)) for f in spec.step_milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=spec.step_gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
