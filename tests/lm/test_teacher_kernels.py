"""The frozen teacher's fused activations: same function, same weights, the student untouched."""

from __future__ import annotations

import torch
from transformers.activations import GELUTanh, NewGELUActivation

from anydistill.lm.common import teacher_logits
from anydistill.lm.methods.gkd import GKD
from anydistill.lm.teacher_kernels import fuse_teacher_activations

from lm.lm_helpers import fit, tiny_data, tiny_lm, tiny_teacher


def test_fused_gelu_gives_the_teacher_the_same_logits_and_weights() -> None:
    teacher = tiny_teacher()
    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0))
    before = teacher_logits(teacher, ids, None, 96).clone()
    weights = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    assert fuse_teacher_activations(teacher.model) == 2  # one MLP activation per layer
    assert not any(isinstance(m, NewGELUActivation) for m in teacher.model.modules())
    after = teacher_logits(teacher, ids, None, 96)
    assert (after - before).abs().max() < 1e-5
    assert (after - before).abs().max() > 0  # really another kernel (fp32 rounding differs)
    assert all(torch.equal(weights[k], v) for k, v in teacher.model.state_dict().items())


def test_fitting_fuses_the_teacher_and_leaves_the_student_as_built() -> None:
    student, teacher = tiny_lm(0), tiny_teacher()
    method = GKD(student, teacher, lmbda=0.0)
    fit(method, tiny_data(), steps=1)
    assert sum(isinstance(m, GELUTanh) for m in teacher.model.modules()) == 2
    assert sum(isinstance(m, NewGELUActivation) for m in student.modules()) == 1
    assert fuse_teacher_activations(tiny_lm(1, width=32)) == 1 and fuse_teacher_activations(torch.nn.Linear(2, 2)) == 0
