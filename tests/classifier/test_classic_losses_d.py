"""ICKD, SRD and ReviewKD: parity with torchdistill 1.1.5 where it has the piece (imported
directly), closed forms on tiny hand-computed fixtures, and one training step of each method.

torchdistill's ``SRDLoss`` is another method under the same acronym (Miles & Mikolajczyk, AAAI
2024: a log-sum feature loss and KL on the student's own logits), so SRD (Yang et al., ICLR 2021)
is checked against the official code's formulas written out independently instead.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from anydistill.classifier.methods.dkd import DKD
from anydistill.classifier.methods.ickd import ICKD, build_ickd_embed, channel_correlation, ickd_loss
from anydistill.classifier.methods.reviewkd import ABF, ReviewKD, build_abfs, hcl_loss, review
from anydistill.classifier.methods.srd import SRD, build_connector, srd_feature_loss, srd_logit_loss
from anydistill.core.teacher import Teacher
from anydistill.data.tensor_data import TensorClassificationData
from anydistill.losses import kd_kl
from anydistill.models.classifiers import small_cnn


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _torchdistill_wrappers():
    """``torchdistill.models.wrapper`` without ``torchdistill.models.__init__``, which imports
    torchvision (not installed): the package is stubbed for the import and restored after."""
    torchdistill = pytest.importorskip("torchdistill")

    def names():
        return [k for k in sys.modules if k == "torchdistill.models" or k.startswith("torchdistill.models.")]

    saved = {k: sys.modules[k] for k in names()}
    stub = types.ModuleType("torchdistill.models")
    stub.__path__ = [str(Path(torchdistill.__file__).parent / "models")]
    sys.modules["torchdistill.models"] = stub
    try:
        return importlib.import_module("torchdistill.models.wrapper")
    finally:
        for k in names():
            del sys.modules[k]
        sys.modules.update(saved)


# ---------------------------------------------------------------------------------------------
# ICKD


def test_ickd_loss_matches_torchdistill_chsim_up_to_its_batch_factor():
    pytest.importorskip("torchdistill")
    from torchdistill.losses.mid_level import ChSimLoss

    f_s, f_t = _randn(5, 6, 4, 4, seed=1), _randn(5, 6, 2, 2, seed=2)  # spatial sizes may differ
    # torchdistill (and ICKD's ImageNet code) divide by C * B^2; the official CIFAR code, ours, by C * B.
    torch.testing.assert_close(ickd_loss(f_s, f_t), ChSimLoss.batch_loss(f_s, f_t) * 5, rtol=1e-10, atol=1e-12)


def test_ickd_loss_matches_a_loop_over_samples_and_channel_pairs():
    f_s, f_t = _randn(3, 4, 3, 3, seed=3), _randn(3, 4, 3, 3, seed=4)
    total = 0.0
    for s, t in zip(f_s, f_t):
        g_s = [[float(a.flatten() @ b.flatten()) for b in s] for a in s]
        g_t = [[float(a.flatten() @ b.flatten()) for b in t] for a in t]
        for row_s, row_t in zip(g_s, g_t):
            norm_s, norm_t = math.sqrt(sum(v * v for v in row_s)), math.sqrt(sum(v * v for v in row_t))
            total += sum((a / norm_s - b / norm_t) ** 2 for a, b in zip(row_s, row_t))
    assert ickd_loss(f_s, f_t).item() == pytest.approx(total / (4 * 3), rel=1e-10)


def test_ickd_hand_computed():
    # Student channels e1, e2 (G = I); teacher channels both e1 (rows of G: (1, 1) / sqrt 2).
    # Squared difference 2 * ((1 - 1/sqrt2)^2 + 1/2) = 4 - 2 sqrt2, over C * B = 2.
    student = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    teacher = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(channel_correlation(student)[0], torch.eye(2, dtype=torch.float64))
    assert ickd_loss(student, teacher).item() == pytest.approx(2 - math.sqrt(2))
    assert ickd_loss(teacher, teacher).item() == 0.0


def test_ickd_embed_is_a_bias_free_1x1_conv_and_batchnorm():
    embed = build_ickd_embed(torch.Size((2, 4, 3, 3)), torch.Size((2, 16, 2, 2)))
    conv, norm = embed
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (4, 16, (1, 1), None)
    assert isinstance(norm, torch.nn.BatchNorm2d) and norm.num_features == 16


def test_ickd_refuses_flat_features():
    method = ICKD(small_cnn((1, 8, 8), 4), student_layer="classifier.2")
    problems = method.recipe_problems(teacher_shapes={"features.5": torch.Size((2, 16, 2, 2))},
                                      student_shapes={"classifier.2": torch.Size((2, 8))}, max_epochs=3)
    assert len(problems) == 1 and problems[0].startswith("ickd correlates the channels of conv maps") and "pick conv layers" in problems[0]


# ---------------------------------------------------------------------------------------------
# SRD


def test_srd_feature_loss_is_the_official_statm_loss():
    f_s, f_t = _randn(4, 6, 3, 3, seed=5), _randn(4, 6, 5, 5, seed=6)
    # statm_loss: means over positions, squared gap averaged over channels, then over the batch.
    gap = [sum((float(a.mean()) - float(b.mean())) ** 2 for a, b in zip(s, t)) / 6 for s, t in zip(f_s, f_t)]
    assert srd_feature_loss(f_s, f_t).item() == pytest.approx(sum(gap) / 4, rel=1e-10)
    flat_s, flat_t = _randn(4, 6, seed=7), _randn(4, 6, seed=8)
    torch.testing.assert_close(srd_feature_loss(flat_s, flat_t), F.mse_loss(flat_s, flat_t))


def test_srd_logit_loss_hand_computed():
    head = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    assert srd_logit_loss(head, target).item() == pytest.approx((0 + 4 + 0 + 9) / 4)
    torch.testing.assert_close(srd_logit_loss(head, target, "kl", 2.0), kd_kl(head, target, temperature=2.0))
    assert srd_logit_loss(target, target, "kl").item() == pytest.approx(0.0, abs=1e-12)


def test_srd_head_is_the_teachers_classifier():
    torch.manual_seed(0)
    teacher = Teacher(small_cnn((1, 8, 8), 4, channels=[8, 16], hidden=16))
    method = SRD(small_cnn((1, 8, 8), 4, channels=[4, 8], hidden=8), teacher)
    x = torch.randn(3, 1, 8, 8)
    out = teacher(x, taps=["classifier.2"])
    head = method.head()
    # A student feature equal to the teacher's gives the teacher's logits: L_FM = L_SR = 0.
    torch.testing.assert_close(F.linear(out.features["classifier.2"], head.weight, head.bias), out.logits)
    assert srd_feature_loss(out.features["classifier.2"], out.features["classifier.2"]).item() == 0.0


def test_srd_connector_is_conv_bn_relu_with_the_official_init():
    torch.manual_seed(0)
    connector = build_connector(torch.Size((2, 64, 4, 4)), torch.Size((2, 256, 8, 8)))
    conv, norm, relu = connector
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (64, 256, (1, 1), None)
    assert isinstance(norm, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)  # N(0, 2 / (k^2 C_T))
    linear = build_connector(torch.Size((2, 8)), torch.Size((2, 16)))
    assert isinstance(linear[0], torch.nn.Linear) and isinstance(linear[1], torch.nn.BatchNorm1d)


def test_srd_refuses_a_head_that_is_not_logits_and_mixed_kinds():
    method = SRD(small_cnn((1, 8, 8), 4), teacher_head="classifier.1", student_layer="features.5")
    problems = method.recipe_problems(
        teacher_shapes={"classifier.2": torch.Size((2, 64)), "classifier.1": torch.Size((2, 64, 1))},
        student_shapes={"features.5": torch.Size((2, 8, 2, 2))}, max_epochs=3)
    assert len(problems) == 2
    assert problems[0].startswith("srd pairs a student output (8, 2, 2) with a teacher output (64,)")
    assert "name the teacher's final linear layer" in problems[1]


# ---------------------------------------------------------------------------------------------
# ReviewKD


@pytest.mark.parametrize("size", [8, 4, 2, 1])
def test_hcl_matches_torchdistill(size):
    pytest.importorskip("torchdistill")
    from torchdistill.losses.mid_level import HierarchicalContextLoss

    f_s, f_t = _randn(3, 5, size, size, seed=9), _randn(3, 5, size, size, seed=10)
    reference = HierarchicalContextLoss("s", "output", "t", "output")
    expected = reference({"s": {"output": (f_s, None)}}, {"t": {"output": f_t}})
    torch.testing.assert_close(hcl_loss(f_s, f_t), expected, rtol=1e-10, atol=1e-12)


def test_hcl_hand_computed():
    # 2x2 map, one nonzero element: full MSE 1/4, the 1x1 level (weight 1/2) MSE (1/4)^2; total weight 1.5.
    f_s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    assert hcl_loss(f_s, torch.zeros_like(f_s)).item() == pytest.approx((1 / 4 + 1 / 32) / 1.5)


@pytest.mark.parametrize("fuse", [False, True])
def test_abf_matches_torchdistill(fuse):
    wrapper = _torchdistill_wrappers()
    torch.manual_seed(0)
    reference = wrapper.AttentionBasedFusion(6, 5, 7, uses_attention=fuse).double()
    ours = ABF(6, 5, 7, fuse=fuse).double()
    state = {k.replace("attention_conv", "att_conv"): v for k, v in reference.state_dict().items()}
    ours.load_state_dict(state)
    x, residual = _randn(2, 6, 4, 4, seed=11), _randn(2, 5, 2, 2, seed=12)
    expected = reference(x, residual, 4) if fuse else reference(x)
    for a, b in zip(ours(x, residual if fuse else None, (4, 4)), expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_abf_resizes_to_the_teachers_size_as_mdistiller():
    abf = ABF(3, 4, 6, fuse=False).eval()
    x = torch.randn(2, 3, 2, 2)
    out, residual = abf(x, None, (4, 4))
    assert out.shape == (2, 6, 4, 4) and residual.shape == (2, 4, 4, 4)
    torch.testing.assert_close(residual, F.interpolate(abf.conv1(x), (4, 4), mode="nearest"))


def test_review_fuses_from_the_deepest_stage():
    torch.manual_seed(0)
    student = [torch.Size((2, 4, 4, 4)), torch.Size((2, 8, 2, 2)), torch.Size((2, 16, 1, 1))]
    teacher = [torch.Size((2, 16, 4, 4)), torch.Size((2, 32, 2, 2)), torch.Size((2, 64, 1, 1))]
    abfs = build_abfs(student, teacher, max_mid_channels=512).eval()
    assert [abf.att_conv is not None for abf in abfs] == [True, True, False]
    assert {abf.conv1[0].out_channels for abf in abfs} == {16}  # min(512, C of the deepest student stage)
    features = [torch.randn(s) for s in student]
    outputs = review(abfs, features, [(4, 4), (2, 2), (1, 1)])
    assert [o.shape for o in outputs] == teacher
    # By hand: the deepest stage alone, then each shallower one fused with the residual above it.
    out2, res = abfs[2](features[2], None, (1, 1))
    out1, res = abfs[1](features[1], res, (2, 2))
    out0, _ = abfs[0](features[0], res, (4, 4))
    for a, b in zip(outputs, [out0, out1, out2]):
        torch.testing.assert_close(a, b)


def test_reviewkd_warmup_is_dkds():
    method = ReviewKD(small_cnn((1, 8, 8), 4))
    assert ReviewKD.warmup_weight is DKD.warmup_weight
    method._trainer = SimpleNamespace(estimated_stepping_batches=2400, global_step=99, current_epoch=0)
    assert method.warmup_weight() == pytest.approx(0.5)  # 200 warm-up steps of 2,400 (20 of 240 epochs)


def test_reviewkd_refuses_unpaired_layers():
    with pytest.raises(ValueError, match="reviewkd pairs layers one to one: teacher_layers has 1 entries and student_layers 2"):
        ReviewKD(small_cnn((1, 8, 8), 4), teacher_layers=["features.2"], student_layers=["features.2", "features.5"])


# ---------------------------------------------------------------------------------------------
# one training step of each method


class _TinyData(TensorClassificationData):
    input_shape = (1, 8, 8)
    num_classes = 4

    def load_splits(self):
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(40, 1, 8, 8, generator=generator), torch.arange(40) % 4
        return {"train": (x[:32], y[:32]), "val": (x[32:], y[32:]), "test": (x[32:], y[32:])}


def _gap_cnn(width: int) -> torch.nn.Sequential:
    """conv -> ReLU -> global average pool -> linear, a ResNet-like head (paths '1' map, '4' head)."""
    return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(width, 4))


SRD_CONV = {"student_layer": "1", "teacher_layer": "1", "teacher_head": "4", "sr_loss": "kl"}


@pytest.mark.parametrize(("method_cls", "kwargs", "aux"), [
    (ICKD, {}, "embed."),
    (SRD, {"kd_weight": 1.0}, "connector."),
    (SRD, SRD_CONV, "connector."),
    (SRD, {"student_layer": "features.5", "teacher_layer": "features.5", "teacher_head": "classifier.1"}, None),
    (ReviewKD, {"warmup": 0.0}, "abfs."),
])
def test_one_training_step(method_cls, kwargs, aux):
    L.seed_everything(0, verbose=False)
    conv = kwargs is SRD_CONV  # conv maps [C, H, W] into a pooled linear head
    teacher = Teacher(_gap_cnn(16) if conv else small_cnn((1, 8, 8), 4, channels=[8, 16], hidden=16))
    method = method_cls(_gap_cnn(4) if conv else small_cnn((1, 8, 8), 4, channels=[4, 8], hidden=8), teacher, **kwargs)
    student_before = {k: v.clone() for k, v in method.student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    if aux is None:  # classifier.1 is the head's hidden Linear, fed the flattened map, not the last layer's input
        with pytest.raises(ValueError, match="srd's teacher_head 'classifier.1' takes 64 features, but teacher_layer"):
            trainer.fit(method, datamodule=_TinyData(batch_size=16))
        return
    trainer.fit(method, datamodule=_TinyData(batch_size=16))
    assert any(not torch.equal(v, student_before[k]) for k, v in method.student.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.model.state_dict().items())
    assert all(p.grad is None for p in teacher.model.parameters())
    # The auxiliary modules live on the method (checkpointed, optimised), never in the student.
    assert set(method.student.state_dict()) == set(student_before)
    assert any(k.startswith(aux) for k in method.state_dict())
