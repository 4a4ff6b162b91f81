"""Consistency distillation of an EDM-preconditioned teacher uses the paper's boundary-corrected
parametrisation (openai/consistency_models' get_scalings_for_boundary_condition) on the teacher's
network: f(x, t_min) = x exactly, and the student is sampled and exported that way."""

from __future__ import annotations

import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.diffusion.common import predict
from anydistill.diffusion.methods.consistency import ConsistencyDistillation
from anydistill.diffusion.schedules import EDM
from anydistill.diffusion.targets import consistency_parametrisation
from anydistill.diffusion.teacher import denoiser_loss, network_output
from anydistill.models.flow_denoisers import mlp_flow_denoiser


def edm_model(seed: int = 0):
    torch.manual_seed(seed)
    return mlp_flow_denoiser((2,), 0, schedule="edm", prediction="x0", preconditioning="edm", hidden=16, depth=2).double()


def test_consistency_output_is_the_boundary_corrected_parametrisation() -> None:
    model, schedule = edm_model(), EDM()
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.linspace(0.002, 80, 8, dtype=torch.float64)
    raw = model(schedule.c_in(t)[:, None] * x, schedule.c_noise(t), None)  # F at EDM's inputs
    torch.testing.assert_close(network_output(model, schedule, x, t, None, "consistency"),
                               consistency_parametrisation(x, t, raw, schedule, sigma_data=0.5), rtol=1e-12, atol=1e-12)
    at_min = torch.full((8,), 0.002, dtype=torch.float64)
    assert torch.equal(network_output(model, schedule, x, at_min, None, "consistency"), x)  # the boundary condition, exactly
    assert not torch.equal(network_output(model, schedule, x, at_min, None, "edm"), x)  # EDM's D only approximately


def test_consistency_distillation_switches_an_edm_student_and_exports_it(tmp_path) -> None:
    method = ConsistencyDistillation(edm_model(1), Teacher(edm_model(0)))
    method.setup("fit")
    assert method.student.preconditioning == "consistency" == method.target.preconditioning
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(predict(method.student, x, torch.full((4,), 0.002, dtype=torch.float64), None, "x0"), x)
    with pytest.raises(ValueError, match="trained by consistency distillation"):
        denoiser_loss(method.student, EDM(), x, torch.ones(4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64), None, "x0",
                      preconditioning="consistency")
    from anydistill.diffusion.evaluate import DiffusionEvaluator
    import json

    spec = {"name": "mlp-denoiser", "schedule": "edm", "prediction": "x0", "preconditioning": "edm", "hidden": 16, "depth": 2}
    evaluator = DiffusionEvaluator.__new__(DiffusionEvaluator)
    evaluator.plots = False
    DiffusionEvaluator.export(evaluator, method.student, spec, tmp_path, "consistency")
    assert json.loads((tmp_path / "model.json").read_text())["preconditioning"] == "consistency"
