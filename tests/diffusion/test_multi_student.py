"""Multi-student: the router sends each class to its group's student (and only its gradients there),
same-size students start from the teacher, smaller ones must first learn it (and do), and an export
rebuilds from its model.json."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.data.toy2d import Toy2DConditionalData
from anydistill.diffusion.common import predict
from anydistill.diffusion.methods.multi_student import MultiStudent
from anydistill.models.flow_denoisers import mlp_flow_denoiser
from anydistill.models.routed_denoiser import RoutedNet, routed, routed_denoiser


def mlp(hidden: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    return mlp_flow_denoiser((2,), 8, hidden=hidden, depth=1, time_embedding=8)


@pytest.mark.parametrize(("students", "classes", "groups"), [(4, 8, [0, 0, 1, 1, 2, 2, 3, 3, 3]), (5, 10, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]),
                                                              (1, 3, [0, 0, 0, 0])])
def test_consecutive_class_groups_and_the_null_label_goes_with_the_last(students, classes, groups) -> None:
    net = RoutedNet([torch.nn.Identity() for _ in range(students)], classes)
    assert net.group(torch.arange(classes + 1)).tolist() == groups


def test_each_row_goes_through_its_students_network_only() -> None:
    model = routed(mlp(), 4)
    for k, net in enumerate(model.net.nets):  # make the students differ
        torch.nn.init.normal_(net.output.weight, std=0.1 * (k + 1))
    x, t, y = torch.randn(16, 2), torch.rand(16), torch.arange(16) % 8
    out = model(x, t, y)
    for i in range(16):
        own = model.net.nets[int(y[i]) // 2]
        torch.testing.assert_close(out[i], own(x[i : i + 1], t[i : i + 1], y[i : i + 1])[0])
    out[y < 2].sum().backward()  # classes 0, 1: student 0
    assert model.net.nets[0].output.weight.grad.abs().sum() > 0 and all(n.output.weight.grad is None or not n.output.weight.grad.any() for n in model.net.nets[1:])


def test_same_size_students_start_from_the_teacher_and_smaller_ones_must_learn_it_first() -> None:
    teacher = mlp(seed=1)
    method = MultiStudent(mlp(), Teacher(teacher), students=2)
    method.setup("fit")
    for net in method.student.net.nets:
        assert all(torch.equal(v, teacher.net.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="score_matching_steps"):
        MultiStudent(mlp(hidden=8), Teacher(teacher), students=2).setup("fit")


def test_teacher_score_matching_brings_small_students_to_the_teacher() -> None:
    L.seed_everything(0, verbose=False)
    teacher = mlp(hidden=32, seed=1)
    method = MultiStudent(mlp(hidden=16), Teacher(teacher), students=2, score_matching_steps=30, optimizer=None)
    method.setup("fit")
    x, t, y = torch.randn(256, 2), torch.rand(256), torch.arange(256) % 8

    def gap() -> float:
        with torch.no_grad():
            return float((predict(method.student, x, t, y, "velocity") - teacher(x, t, y)).pow(2).mean())

    before = gap()
    data = Toy2DConditionalData(num_train=640, num_val=32, num_test=64, batch_size=64)  # 10 batches an epoch
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(method, datamodule=data)
    assert gap() < 0.5 * before, (before, gap())


def test_an_export_rebuilds_from_its_spec() -> None:
    model = routed(mlp(), 4)
    spec = {"name": "mlp-denoiser", "hidden": 16, "depth": 1, "time_embedding": 8}
    rebuilt = routed_denoiser((2,), 8, students=4, student=spec)
    rebuilt.load_state_dict(model.state_dict())
    x, t, y = torch.randn(8, 2), torch.rand(8), torch.arange(8)
    torch.testing.assert_close(rebuilt(x, t, y), model(x, t, y))
