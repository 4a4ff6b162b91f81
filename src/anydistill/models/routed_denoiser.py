"""``routed-denoiser``: K denoisers behind one interface, each example sent to the one that owns it:
by its class (multi-student distillation, Song et al. 2025: the classes split into K consecutive
groups, one student each) or by its time (Phased DMD, Fan et al. 2025: one expert per range of
noise levels). A `Denoiser` like any other, so the samplers, the evaluator and the distillation
methods use it unchanged; ``model.json`` of such an export rebuilds it."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import Tensor, nn

from anydistill.models.flow_denoisers import Denoiser


class RoutedNet(nn.Module):
    """``forward(x_t [B, ...], t_in [B], cond [B] | None) -> [B, ...]``: row ``i`` through ``nets[group_i]``.

    Args:
        nets: the K networks (any ``net(x_t, t_in, cond)``).
        num_classes: the data's classes (0: unconditional).
        by: ``class``: class ``c`` goes to ``c * K // num_classes`` (consecutive groups; the null
            label ``num_classes`` with the last class); ``time``: ``t_in`` goes to the last net whose
            start time ``boundaries[k]`` is at or above it (``boundaries`` falling, ``boundaries[0]``
            the noisiest: net k owns ``(boundaries[k + 1], boundaries[k]]``).
        boundaries: ``by: time``'s K start times, in the network's time input.
    """

    def __init__(self, nets: list[nn.Module], num_classes: int, by: str = "class", boundaries: list[float] | None = None):
        super().__init__()
        if by == "class" and not 1 <= len(nets) <= num_classes:
            raise ValueError(f"routed-denoiser: {len(nets)} students for {num_classes} classes; give 1 to {num_classes} students.")
        if by == "time" and (boundaries is None or len(boundaries) != len(nets) or any(a <= b for a, b in zip(boundaries, boundaries[1:]))):
            raise ValueError(f"routed-denoiser: by time needs one falling start time per net ({len(nets)}); got {boundaries}.")
        self.nets, self.num_classes, self.by = nn.ModuleList(nets), num_classes, by
        self.register_buffer("boundaries", torch.tensor(boundaries or [], dtype=torch.float64), persistent=False)

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.num_classes > 0 else None

    def group(self, cond: Tensor | None, t_in: Tensor | None = None) -> Tensor:
        """``[B]`` the net of each row."""
        if self.by == "time":
            tolerance = 1e-6 * float(self.boundaries[0].abs().clamp(min=1))
            return ((self.boundaries[None] >= t_in.double()[:, None] - tolerance).sum(1) - 1).clamp(min=0)
        if cond is None:
            raise ValueError("routed-denoiser sends each example to its class's student: give labels (cond).")
        return cond.clamp(max=self.num_classes - 1) * len(self.nets) // self.num_classes

    def forward(self, x_t: Tensor, t_in: Tensor, cond: Tensor | None = None) -> Tensor:
        groups, out = self.group(cond, t_in), None
        for k, net in enumerate(self.nets):
            rows = (groups == k).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            part = net(x_t[rows], t_in[rows], None if cond is None else cond[rows])
            out = part.new_zeros((x_t.shape[0], *part.shape[1:])) if out is None else out
            out = out.index_copy(0, rows, part)  # out of place: autograd reaches every net
        return out


def routed_denoiser(input_shape: tuple[int, ...], num_classes: int, *, students: int, student: dict[str, Any],
                    by: Literal["class", "time"] = "class", boundaries: list[float] | None = None) -> Denoiser:
    """``students`` copies of the model ``student`` (a model section: ``{name: conv-denoiser, width: 8}``)
    behind a `RoutedNet` (``by`` class, or by time with its ``boundaries``), read as that model is."""
    from anydistill.core.registry import import_object
    from anydistill.models.catalog import MODELS

    options = {k: v for k, v in student.items() if k not in ("name", "sampling", "checkpoint")}
    if student.get("name") not in MODELS:
        raise ValueError(f"routed-denoiser: student '{student.get('name')}' is not a model name; give e.g. {{name: conv-denoiser}}.")
    one = import_object(MODELS[student["name"]])(input_shape, num_classes, **options)
    return routed(one, students, by, boundaries)


def routed(one: Denoiser, students: int, by: str = "class", boundaries: list[float] | None = None) -> Denoiser:
    """``students`` independent copies of ``one`` (same initial weights) behind a `RoutedNet`."""
    if by == "class" and one.null_class is None:
        raise ValueError("multi-student splits the classes between students: the student must be class-conditional "
                         "(class-conditional data such as toy2d-conditional or digits).")
    with torch.no_grad():
        net = RoutedNet([copy.deepcopy(one.net) for _ in range(students)], one.null_class or 0, by, boundaries)
    denoiser = Denoiser(net, one.schedule, one.prediction, one.preconditioning)
    if hasattr(one, "schedule_options"):  # a schedule with parameters (a diffusers model's betas): read as ``one`` is
        denoiser.schedule_options = one.schedule_options
    return denoiser
