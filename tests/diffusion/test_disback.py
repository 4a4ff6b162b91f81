"""DisBack: the degradation path is recorded with the generator frozen, walked back most degraded
first, and ends at the teacher; the fake score starts from the most degraded snapshot; an exact
teacher (no weights to train) is refused in one line."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from anydistill.core.teacher import Teacher
from anydistill.data.toy2d import Toy2DData
from anydistill.diffusion.analytic_mixture import analytic_mixture
from anydistill.diffusion.methods.disback import DisBack
from anydistill.models.flow_denoisers import mlp_flow_denoiser


def tiny(seed: int):
    torch.manual_seed(seed)
    return mlp_flow_denoiser((2,), 0, hidden=16, depth=1, time_embedding=8)


def test_the_walk_goes_back_one_snapshot_every_switch_and_ends_at_the_teacher() -> None:
    method = DisBack(tiny(1), Teacher(tiny(0)), path_checkpoints=3, path_interval=5, switch_every=4)
    assert [method.target_index(i) for i in range(0, 16, 2)] == [2, 2, 1, 1, 0, 0, None, None]
    assert method.path_steps == 15


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage_one_records_a_path_with_the_generator_frozen_and_hands_the_fake_its_end() -> None:
    L.seed_everything(0, verbose=False)
    teacher = tiny(0)
    method = DisBack(tiny(1), Teacher(teacher), path_checkpoints=3, path_interval=2, switch_every=100, fake_lr=1e-2)
    data = Toy2DData(num_train=128, num_val=32, num_test=64, batch_size=64)  # 2 batches an epoch: 3 epochs = stage 1
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(method, datamodule=data)
    generator = method.student.state_dict()
    assert all(torch.equal(generator[k], v) for k, v in teacher.state_dict().items()), "the generator moved during stage 1"
    snapshots = [state(s) for s in method.path]
    first = next(iter(teacher.state_dict()))
    distances = [float((s[first] - teacher.state_dict()[first]).norm()) for s in snapshots]
    assert 0 < distances[0] < distances[1] < distances[2], distances  # each snapshot further from the teacher
    assert all(torch.equal(method.fake.state_dict()[k], v) for k, v in snapshots[-1].items())


def test_an_exact_teacher_is_refused() -> None:
    method = DisBack(tiny(1), Teacher(analytic_mixture((2,), 0)), init_from="teacher")
    with pytest.raises(ValueError, match="network teacher"):
        method.setup("fit")
