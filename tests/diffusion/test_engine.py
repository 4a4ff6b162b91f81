"""The diffusion family in the engine: data modules, the evaluator and export, resume of the
stateful methods (PD's round teacher, DMD2's two optimizers and update counter, reflow's own
pairs), and the diffusers UNet2DModel path."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from anydistill.core.teacher import Teacher
from anydistill.diffusion.methods.disback import DisBack
from anydistill.diffusion.methods.dmd2 import DMD2
from anydistill.diffusion.methods.phased_dmd import PhasedDMD
from anydistill.diffusion.evaluate import DiffusionEvaluator
from anydistill.diffusion.methods.progressive import ProgressiveDistillation
from anydistill.diffusion.methods.reflow import Reflow
from anydistill.diffusion.methods.train_teacher import DiffusionTeacherTraining
from anydistill.models.flow_denoisers import conv_flow_denoiser, mlp_flow_denoiser
from anydistill.data.digits_generation import DigitsGenerationData
from anydistill.data.toy2d import Toy2DConditionalData, Toy2DData


def tiny(seed: int = 0, num_classes: int = 0):
    torch.manual_seed(seed)
    return mlp_flow_denoiser((2,), num_classes, hidden=16, depth=1, time_embedding=8)


def small_data(**kwargs) -> Toy2DData:
    return Toy2DData(num_train=128, num_val=32, num_test=300, batch_size=64, **kwargs)


def test_toy2d_splits_are_fixed_and_distinct() -> None:
    a, b = small_data(), small_data(seed=7)  # the run seed shuffles batches, never the points
    for split in ("train", "val", "test"):
        torch.testing.assert_close(a.split(split)[0], b.split(split)[0])
    assert not torch.equal(a.split("train")[0][:32], a.split("val")[0])
    assert a.split("train")[0].shape == (128, 2) and (a.split("train")[1] == 0).all()
    conditional = Toy2DConditionalData(num_train=400)
    x, y = conditional.split("train")
    assert Toy2DConditionalData.num_classes == 8 and set(y.tolist()) == set(range(8))
    with pytest.raises(ValueError, match="distribution"):
        Toy2DData("eight_gausians")


def test_digits_generation_is_scaled_to_plus_minus_one_on_the_classifier_split() -> None:
    from anydistill.data.digits import DigitsData

    data = DigitsGenerationData()
    x, y = data.split("test")
    assert x.min() == -1 and x.max() == 1 and x.shape == (360, 1, 8, 8)
    torch.testing.assert_close(y, DigitsData().split("test")[1])


def test_evaluator_measures_teacher_at_many_and_few_steps_and_exports(tmp_path) -> None:
    data = Toy2DData(num_train=64, num_val=16, num_test=300)
    evaluator = DiffusionEvaluator(data, num_samples=200, teacher_steps=8, student_steps=[1, 2], straightness_steps=4)
    teacher = tiny()
    evaluator.export(teacher, {"name": "mlp-denoiser"}, tmp_path / "teacher", "diffusion-teacher")
    row = evaluator.evaluate(teacher, Teacher(teacher), "diffusion-teacher")
    for nfe in (1, 2, 8):
        assert {f"swd@{nfe}", f"mmd@{nfe}", f"coverage@{nfe}", f"high_quality@{nfe}", f"ms_per_sample@{nfe}"} <= set(row)
    assert row["coupling@8"] == 0.0 and row["coupling@1"] > 0 and row["straightness"] >= 0
    assert (tmp_path / "teacher" / "samples.png").stat().st_size > 0
    spec = json.loads((tmp_path / "teacher" / "model.json").read_text())
    assert spec["sampling"] is None

    student = tiny(1)
    student.sampling = {"sampler": "multistep", "steps": [1, 4]}
    evaluator.export(student, {"name": "mlp-denoiser"}, tmp_path / "student", "consistency")
    row = evaluator.evaluate(student, Teacher(teacher), "consistency")
    assert {"swd@1", "swd@4", "coupling@1"} <= set(row) and "swd@8" not in row and "straightness" not in row
    assert json.loads((tmp_path / "student" / "model.json").read_text())["sampling"]["sampler"] == "multistep"
    # same noise, same model: the same numbers
    assert evaluator.evaluate(student, Teacher(teacher), "consistency")["swd@1"] == row["swd@1"]


def test_evaluator_on_digits_reports_frechet_distance_class_accuracy_and_diversity() -> None:
    data = DigitsGenerationData()
    evaluator = DiffusionEvaluator(data, num_samples=100, teacher_steps=2, student_steps=[1], classifier_epochs=3)
    model = conv_flow_denoiser((1, 8, 8), 10, width=8)
    row = evaluator.evaluate(model, None, "diffusion-teacher")
    assert {"fd@1", "class_acc@1", "diversity@1", "fd@2"} <= set(row)
    scores = evaluator.scores(data.split("test")[0][:300], data.split("test")[1][:300])  # real digits score well
    assert scores["class_acc"] > 0.8 and scores["fd"] < row["fd@2"]
    assert evaluator.card()["feature_classifier_test_accuracy"] > 0.8


class StopAfter(L.Callback):
    """Ends training after ``epochs`` epochs as an interruption would, with the full run's schedule."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def fit(method, data, epochs: int, root, ckpt_path=None, stop_after: int | None = None):
    extra = [StopAfter(stop_after)] if stop_after else []
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True), *extra],
    )
    if method.own_loop:
        data.setup()
        method.attach_data(data)
        trainer.fit(method, ckpt_path=ckpt_path)
    else:
        trainer.fit(method, datamodule=data, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("name", ["progressive", "dmd2", "reflow", "disback-recording", "disback-walking", "phased-dmd"])
def test_resume_gives_the_uninterrupted_weights(name: str, tmp_path) -> None:
    teacher_model = tiny(0)

    def build():
        L.seed_everything(3, verbose=False)
        if name == "progressive":  # 3 rounds of 1 epoch: the resume crosses a round boundary
            return ProgressiveDistillation(tiny(1), Teacher(teacher_model), teacher_steps=8, student_steps=1, epochs_per_round=1)
        if name == "dmd2":
            return DMD2(tiny(1), Teacher(teacher_model), update_ratio=3, num_steps=2)
        if name == "phased-dmd":  # 2 phases of 3 iterations: the cut after 4 is inside phase 1, its fake score restarted
            return PhasedDMD(tiny(1), Teacher(teacher_model), update_ratio=2, phases=2, num_steps=2, phase_iterations=3)
        if name.startswith("disback"):  # 2 batches an epoch, cut after 4: recording the path (5 snapshots) or walking it back (3)
            return DisBack(tiny(1), Teacher(teacher_model), update_ratio=2, path_checkpoints=5 if name.endswith("recording") else 3,
                           path_interval=1, switch_every=1)
        return Reflow(tiny(1), Teacher(teacher_model), pair_steps=4, time_distribution="u-shaped")

    whole = build()
    fit(whole, small_data(), 3, tmp_path / "whole")
    cut = build()
    fit(cut, small_data(), 3, tmp_path / "cut", stop_after=2)  # interrupted after 2 of 3 epochs
    resumed = build()
    fit(resumed, small_data(), 3, tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=f"{key} differs after resume")


def test_diffusers_unet_path() -> None:
    pytest.importorskip("diffusers")
    from anydistill.models.flow_denoisers import diffusers_unet_denoiser

    torch.manual_seed(0)
    teacher = diffusers_unet_denoiser((1, 8, 8), 10, block_out_channels=[8, 16], norm_num_groups=4)
    student = diffusers_unet_denoiser((1, 8, 8), 10, block_out_channels=[8, 16], norm_num_groups=4)
    assert teacher.null_class == 10
    data = DigitsGenerationData(train_limit=32, batch_size=16)
    batch = {"x": data.split("train")[0][:16], "y": data.split("train")[1][:16]}
    train = DiffusionTeacherTraining(teacher)
    train.setup("fit")
    loss = train._loss(batch, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in teacher.parameters())
    teacher.zero_grad()
    method = ProgressiveDistillation(student, Teacher(teacher), teacher_steps=4, student_steps=1)
    method.setup("fit")
    torch.testing.assert_close(method.student.state_dict(), teacher.state_dict())  # PD starts from the teacher
    assert torch.isfinite(method.loss(batch))
    dmd2 = DMD2(diffusers_unet_denoiser((1, 8, 8), 10, block_out_channels=[8, 16], norm_num_groups=4), Teacher(teacher))
    dmd2.setup("fit")
    assert dmd2.discriminate(batch["x"], batch["y"]).shape == (16,)


def test_evaluator_data_row_and_conditional_class_accuracy() -> None:
    data = Toy2DConditionalData(num_train=64, num_val=16, num_test=400)
    evaluator = DiffusionEvaluator(data, num_samples=160, teacher_steps=4, student_steps=[1], straightness_steps=2)
    floor = evaluator.baselines(set())["data"]
    assert floor["coverage@0"] == 1.0 and floor["high_quality@0"] > 0.95 and "swd@0" in floor
    draws = [evaluator.scores(data.sample(160, seed)[0], None)["swd"] for seed in range(evaluator.reference_draws)]
    assert floor["swd@0"] == pytest.approx(sum(draws) / len(draws)) and floor["swd_std@0"] > 0  # the mean of 5 draws, not one
    assert evaluator.baselines({"data"}) == {}
    x, y = data.sample(160, 0)
    assert evaluator.scores(x, y)["class_acc"] == 1.0  # exact samples sit on their own class's mode
    row = evaluator.evaluate(tiny(0, num_classes=8), None, "diffusion-teacher")
    assert 0.0 <= row["class_acc@4"] <= 1.0


def test_evaluator_scores_within_class_sub_modes_on_the_sub_mode_mixture() -> None:
    data = Toy2DConditionalData("class_submode_mixture", num_train=64, num_val=16, num_test=400)
    evaluator = DiffusionEvaluator(data, num_samples=800, teacher_steps=4, student_steps=[1], straightness_steps=2)
    x, y = data.sample(4000, 0)
    exact = evaluator.scores(x, y)
    assert exact["class_acc"] == 1.0 and exact["submodes_kept"] == 1.0 and exact["submode_evenness"] > 0.99
    centres = torch.tensor([0, 4, 8, 12, 16, 20, 24, 28])  # every class collapsed onto its first sub-mode
    collapsed = evaluator.scores(evaluator.modes[centres[y]], y)
    assert collapsed["class_acc"] == 1.0 and collapsed["submodes_kept"] == 0.25 and collapsed["submode_evenness"] == 0.0
