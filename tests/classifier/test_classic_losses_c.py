"""AB, KD-SVD, OFD and FT: parity with torchdistill 1.1.5 where it has the piece (AB's
``AltActTransferLoss``, FT's ``FTLoss`` and paraphraser/translator, imported directly), closed
forms on tiny hand-computed fixtures, and one training step of each method.

torchdistill has neither KD-SVD nor OFD: KD-SVD is checked against a per-sample NumPy loop of
RepDistiller's/mdistiller's definition, OFD's loss against mdistiller's three-case form and its
margin against SciPy's truncated normal, all written out independently here.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from anydistill.classifier.methods.ab import AB, ab_layer_weights, ab_loss
from anydistill.classifier.methods.ft import FT, Paraphraser, _conv_stack, factor_channels, ft_loss, reconstruction_loss
from anydistill.classifier.methods.kdsvd import KDSVD, kdsvd_loss
from anydistill.classifier.methods.ofd import OFD, ofd_layer_weights, ofd_loss, ofd_margin
from anydistill.classifier.preactivation import build_connector
from anydistill.core.teacher import Teacher
from anydistill.data.tensor_data import TensorClassificationData
from anydistill.models.classifiers import small_cnn


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _torchdistill_wrapper_module():
    """``torchdistill.models.wrapper`` without running ``torchdistill.models.__init__`` (it imports
    torchvision, not installed): a bare package module stands in for the import, then is removed."""
    torchdistill = pytest.importorskip("torchdistill")
    before = {k: v for k, v in sys.modules.items() if k.startswith("torchdistill.models")}
    package = types.ModuleType("torchdistill.models")
    package.__path__ = [str(Path(torchdistill.__file__).parent / "models")]
    sys.modules["torchdistill.models"] = package
    try:
        return importlib.import_module("torchdistill.models.wrapper")
    finally:
        for name in [k for k in sys.modules if k.startswith("torchdistill.models")]:
            del sys.modules[name]
        sys.modules.update(before)


# ---------------------------------------------------------------------------------------------
# AB


def test_ab_loss_matches_torchdistill():
    pytest.importorskip("torchdistill")
    from torchdistill.losses.mid_level import AltActTransferLoss

    s1, t1 = _randn(4, 3, 5, 5, seed=1), _randn(4, 3, 5, 5, seed=2)
    s2, t2 = _randn(4, 6, 3, 3, seed=3), _randn(4, 6, 3, 3, seed=4)
    w = ab_layer_weights(2)
    pairs = {f"p{i}": {"student": {"io": "output", "path": f"s{i}"}, "teacher": {"io": "output", "path": f"t{i}"}, "weight": w[i]}
             for i in range(2)}
    reference = AltActTransferLoss(pairs, margin=1.0, reduction="mean")
    expected = reference({"s0": {"output": s1}, "s1": {"output": s2}}, {"t0": {"output": t1}, "t1": {"output": t2}})
    ours = w[0] * ab_loss(s1, t1, 1.0) + w[1] * ab_loss(s2, t2, 1.0)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_ab_loss_hand_computed():
    # mu = 1. Teacher active: s = 0.5 -> (0.5 - 1)^2, s = 2 -> 0. Inactive: s = -0.5 -> (-0.5 + 1)^2, s = -2 -> 0.
    student = torch.tensor([[0.5, 2.0, -0.5, -2.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 3.0, -1.0, 0.0]], dtype=torch.float64)
    assert ab_loss(student, teacher, 1.0).item() == pytest.approx(0.5)
    assert ab_loss(student.repeat(2, 1), teacher.repeat(2, 1), 1.0).item() == pytest.approx(0.5)  # summed, / B
    assert ab_layer_weights(3) == [0.25, 0.5, 1.0]


def test_connector_is_1x1_conv_and_bn_with_he_init():
    torch.manual_seed(0)
    connector = build_connector(torch.Size((2, 8, 4, 4)), torch.Size((2, 256, 4, 4)))
    conv, bn = connector
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (8, 256, (1, 1), None)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.1)
    assert torch.equal(bn.weight.data, torch.ones(256)) and torch.equal(bn.bias.data, torch.zeros(256))
    assert isinstance(build_connector(torch.Size((2, 8)), torch.Size((2, 16)))[1], torch.nn.BatchNorm1d)
    # AB's official code connects equal widths directly.
    assert isinstance(build_connector(torch.Size((2, 8, 4, 4)), torch.Size((2, 8, 4, 4)), identity_if_same_width=True), torch.nn.Identity)


def test_ab_refuses_pairs_of_different_spatial_sizes():
    method = AB(small_cnn((1, 8, 8), 4), teacher_layers=["features.0"], student_layers=["features.3"])
    problems = method.recipe_problems(teacher_shapes={"features.0": torch.Size((2, 8, 8, 8))},
                                      student_shapes={"features.3": torch.Size((2, 8, 4, 4))}, max_epochs=5)
    assert problems == [("ab compares neurons position by position, but the student map (8, 4, 4) and the teacher map "
                         "(8, 8, 8) differ in height or width; pick layers of the same spatial size (student 'features.3', teacher 'features.0')")]
    assert AB(small_cnn((1, 8, 8), 4), init_epochs=5).recipe_problems(
        teacher_shapes={"features.0": torch.Size((2, 8, 8, 8)), "features.3": torch.Size((2, 16, 4, 4))},
        student_shapes={"features.0": torch.Size((2, 4, 8, 8)), "features.3": torch.Size((2, 8, 4, 4))}, max_epochs=5,
    ) == ["ab's init_epochs (5) must be below trainer.max_epochs (5): stage 2 (training the whole student on the labels) would never run."]


# ---------------------------------------------------------------------------------------------
# OFD


def test_ofd_margin_is_the_mean_of_the_negative_part():
    from scipy.stats import norm, truncnorm

    mean = torch.tensor([0.0, 1.0, -0.5, 2.0, 5.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0], dtype=torch.float64)
    margin = ofd_margin(mean, std)
    for m, s, got in zip(mean.tolist(), std.tolist(), margin.tolist()):
        if norm.cdf(-m / s) > 1e-3:
            assert got == pytest.approx(truncnorm(-np.inf, -m / s, loc=m, scale=s).mean(), rel=1e-9)
        else:  # 5 sigma above 0: almost never negative
            assert got == pytest.approx(-3 * s)
    assert margin[0].item() == pytest.approx(-math.sqrt(2 / math.pi))  # E[x | x < 0] of N(0, 1)
    torch.testing.assert_close(ofd_margin(mean, -std), margin)  # a negative BN scale counts by its size


def _ofd_three_cases(source, target, margin):
    """mdistiller's ``feat_loss``, written out case by case."""
    m = margin.view(1, -1, 1, 1)
    loss = ((source - m) ** 2 * ((source > m) & (target <= m))
            + (source - target) ** 2 * ((source > target) & (target > m) & (target <= 0))
            + (source - target) ** 2 * (target > 0))
    return loss.abs().mean(dim=0).sum()


def test_ofd_loss_matches_the_official_case_split():
    s, t = _randn(4, 6, 3, 3, seed=5), _randn(4, 6, 3, 3, seed=6)
    margin = -_randn(6, seed=7).abs()
    torch.testing.assert_close(ofd_loss(s, t, margin), _ofd_three_cases(s, t, margin), rtol=1e-10, atol=1e-10)
    assert ofd_layer_weights(3) == [0.25, 0.5, 1.0]


def test_ofd_loss_hand_computed():
    # m = -1. t = 2 > 0: (s - t)^2 always. t = -3 < m: target -1, penalised only if s > -1.
    # t = -0.5 in (m, 0]: penalised only if s > t.
    margin = torch.tensor([-1.0], dtype=torch.float64)
    s = torch.tensor([1.0, 0.0, -2.0, 0.0, -1.0], dtype=torch.float64).view(1, 1, 1, 5)
    t = torch.tensor([2.0, -3.0, -3.0, -0.5, -0.5], dtype=torch.float64).view(1, 1, 1, 5)
    assert ofd_loss(s, t, margin).item() == pytest.approx(1.0 + 1.0 + 0.0 + 0.25 + 0.0)


def test_ofd_margin_from_the_teacher_batchnorm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 1, 5, 5))
    model[1].weight.data = torch.tensor([1.0, -0.5, 2.0])
    model[1].bias.data = torch.tensor([0.0, 1.0, -1.0])
    method = OFD(small_cnn((1, 8, 8), 4), Teacher(model), teacher_layers=["1"], student_layers=["features.0"])
    torch.testing.assert_close(method.teacher_margin("1"), ofd_margin(model[1].bias.data, model[1].weight.data))


def test_ofd_refuses_mixed_feature_kinds():
    method = OFD(small_cnn((1, 8, 8), 4), teacher_layers=["classifier.1"], student_layers=["features.3"])
    assert method.recipe_problems(teacher_shapes={"classifier.1": torch.Size((2, 64))},
                                  student_shapes={"features.3": torch.Size((2, 8, 4, 4))}, max_epochs=5) == [
        ("ofd cannot pair a student output (8, 4, 4) with a teacher output (64,); pick two conv maps [C, H, W] "
         "or two flat features [D] (student 'features.3', teacher 'classifier.1')")]


# ---------------------------------------------------------------------------------------------
# KD-SVD


def _kdsvd_by_loops(student_maps, teacher_maps, k):
    """RepDistiller's KDSVD one sample at a time with NumPy's SVD (teacher vectors signed so that
    their entries sum to >= 0, as ours)."""
    total, batch = 0.0, student_maps[0].shape[0]
    for b in range(batch):
        previous = None
        for f_s, f_t in zip(student_maps, teacher_maps):
            vs = []
            for f, n in ((f_t[b], k), (f_s[b], k + 3)):
                x = f.reshape(f.shape[0], -1).T.numpy()  # [positions, C]
                _, sv, vt = np.linalg.svd(x, full_matrices=False)
                vs.append((sv[:n] / np.linalg.norm(sv[:n]), vt[:n].T))
            (s_t, v_t), (_, v_s) = vs
            v_t = v_t * np.where(v_t.sum(0) < 0, -1.0, 1.0)
            aligned = np.zeros_like(v_t)
            for j in range(k):
                cosine = v_s.T @ v_t[:, j]
                i = int(np.argmax(np.abs(cosine)))
                aligned[:, j] = np.sign(cosine[i]) * v_s[:, i]
            v_s, v_t = aligned * s_t, v_t * s_t
            if previous is not None:
                rbf_s = np.exp(-(v_s[:, None, :] - previous[0][None, :, :]) ** 2 / 8)
                rbf_t = np.exp(-(v_t[:, None, :] - previous[1][None, :, :]) ** 2 / 8)
                total += ((rbf_s - rbf_t) ** 2).sum()
            previous = (v_s, v_t)
    return total / batch


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_the_reference_definition(k):
    students = [_randn(3, 4, 4, 4, seed=8), _randn(3, 6, 2, 2, seed=9), _randn(3, 5, 2, 2, seed=10)]
    teachers = [_randn(3, 4, 8, 8, seed=11), _randn(3, 6, 4, 4, seed=12), _randn(3, 5, 2, 2, seed=13)]
    expected = _kdsvd_by_loops(students, teachers, k)
    assert kdsvd_loss(students, teachers, k).item() == pytest.approx(expected, rel=1e-8)


def test_kdsvd_hand_computed():
    # Flat features: one singular vector each, the normalised feature. Teacher: e1 then e2;
    # student: e1 then (1, 1) / sqrt 2 (cosine with e2 > 0, so kept).
    a = 1 / math.sqrt(2)
    teacher = [torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64)]
    student = [torch.tensor([[2.0, 0.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64)]
    def g(d):
        return math.exp(-d * d / 8)

    # G[i, j] = g(v2_i - v1_j): teacher [[g(1), 1], [1, g(1)]], student [[g(1 - a), g(a)], [g(1 - a), g(a)]].
    expected = (g(1 - a) - g(1)) ** 2 + (g(a) - 1) ** 2 + (g(1 - a) - 1) ** 2 + (g(a) - g(1)) ** 2
    assert kdsvd_loss(student, teacher, k=1).item() == pytest.approx(expected)
    assert kdsvd_loss(student[:1], teacher[:1]).item() == 0.0  # one layer: no consecutive pair


def test_kdsvd_gradient_stays_finite_with_repeated_singular_values():
    student = _randn(2, 4, 2, 2, seed=14)
    student[0, 1:] = 0.0  # sample 0 has rank 1: three zero singular values
    student.requires_grad_(True)
    teachers = [_randn(2, 4, 2, 2, seed=15), _randn(2, 4, 2, 2, seed=16)]
    kdsvd_loss([student, student * 2 + 1], teachers).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[1].abs().sum() > 0  # the regular sample still learns


def test_kdsvd_refuses_unequal_widths_and_a_single_layer():
    method = KDSVD(small_cnn((1, 8, 8), 4))
    problems = method.recipe_problems(
        teacher_shapes={"features.2": torch.Size((2, 16, 4, 4)), "features.5": torch.Size((2, 32, 2, 2))},
        student_shapes={"features.2": torch.Size((2, 16, 4, 4)), "features.5": torch.Size((2, 8, 2, 2))}, max_epochs=5)
    assert problems == [("kdsvd compares singular vectors channel by channel, but the student layer has 8 channels and the "
                         "teacher layer 32 (student 'features.5', teacher 'features.5'); give the student the teacher's "
                         "widths there (as digits/kdsvd does)")]
    with pytest.raises(ValueError, match="kdsvd compares consecutive layers: teacher_layers has 1 entries"):
        KDSVD(small_cnn((1, 8, 8), 4), teacher_layers=["features.5"], student_layers=["features.5"])


# ---------------------------------------------------------------------------------------------
# FT


def test_ft_loss_matches_torchdistill():
    pytest.importorskip("torchdistill")
    from torchdistill.losses.mid_level import FTLoss

    f_s, f_t = _randn(4, 8, 3, 3, seed=17), _randn(4, 8, 3, 3, seed=18)
    expected = FTLoss(p=1, reduction="mean")({"translator": {"output": f_s}}, {"paraphraser": {"output": f_t}})
    torch.testing.assert_close(ft_loss(f_s, f_t), expected, rtol=1e-5, atol=1e-5)


def test_ft_loss_and_reconstruction_hand_computed():
    # Normalised (1, 0) and (0, 2) -> (1, 0) and (0, 1): |difference| (1, 1), mean 1.
    assert ft_loss(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.0)
    x, y = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    assert reconstruction_loss(x, y, "l1").item() == pytest.approx(1.5)
    assert reconstruction_loss(x, y, "l2").item() == pytest.approx(2.5)


def test_ft_paraphraser_and_translator_match_torchdistill():
    wrapper = _torchdistill_wrapper_module()
    torch.manual_seed(0)
    reference = wrapper.Paraphraser4FactorTransfer(k=0.5, num_input_channels=8, uses_bn=False)
    ours = Paraphraser(8, factor_channels(8, 0.5))
    ours.load_state_dict(reference.state_dict())
    x = _randn(2, 8, 4, 4, seed=19, dtype=torch.float32)
    torch.testing.assert_close(ours(x), reference(x))
    reference.uses_decoder = False
    torch.testing.assert_close(ours.encode(x), reference(x))
    translator_ref = wrapper.Translator4FactorTransfer(6, 4, uses_bn=False)
    translator = _conv_stack([6, 6, 4, 4])
    translator.load_state_dict(translator_ref.state_dict())
    torch.testing.assert_close(translator(x[:, :6]), translator_ref(x[:, :6]))


def test_ft_refuses_flat_features():
    method = FT(small_cnn((1, 8, 8), 4), teacher_layer="classifier.2")
    assert method.recipe_problems(teacher_shapes={"classifier.2": torch.Size((2, 64))},
                                  student_shapes={"features.5": torch.Size((2, 8, 2, 2))}, max_epochs=5) == [
        ("ft's paraphraser and translator are convolutional, but teacher_layer 'classifier.2' gives (64,); "
         "set teacher_layer to a layer giving conv maps [C, H, W]")]


# ---------------------------------------------------------------------------------------------
# one training step of each method


class _TinyData(TensorClassificationData):
    input_shape = (1, 8, 8)
    num_classes = 4

    def load_splits(self):
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(40, 1, 8, 8, generator=generator), torch.arange(40) % 4
        return {"train": (x[:32], y[:32]), "val": (x[32:], y[32:]), "test": (x[32:], y[32:])}


def _trainer(callbacks=()):
    return L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))


def _one_step(method_cls, student_channels=(4, 8), callbacks=(), **kwargs):
    L.seed_everything(0, verbose=False)
    teacher = Teacher(small_cnn((1, 8, 8), 4, channels=[8, 16], hidden=16))
    method = method_cls(small_cnn((1, 8, 8), 4, channels=list(student_channels), hidden=8), teacher, **kwargs)
    student_before = {k: v.clone() for k, v in method.student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    _trainer(callbacks).fit(method, datamodule=_TinyData(batch_size=16))
    assert any(not torch.equal(v, student_before[k]) for k, v in method.student.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.model.state_dict().items())
    assert set(method.student.state_dict()) == set(student_before)  # auxiliary modules live on the method
    return method


@pytest.mark.parametrize(("method_cls", "kwargs", "channels", "aux"), [
    (AB, {"init_epochs": 1}, (4, 8), "connectors."),  # stage 1: student up to the taps + connectors
    (AB, {"init_epochs": 0, "kd_weight": 1.0}, (4, 8), "connectors."),  # stage 2
    (OFD, {"kd_weight": 1.0}, (4, 8), "pairs.0.margin"),
    (KDSVD, {}, (8, 16), None),  # KD-SVD needs the teacher's widths
    (FT, {"paraphraser_epochs": 1}, (4, 8), "translator."),
])
def test_one_training_step(method_cls, kwargs, channels, aux):
    method = _one_step(method_cls, student_channels=channels, **kwargs)
    if aux:
        assert any(k.startswith(aux) for k in method.state_dict())


def test_ofd_margins_come_from_the_teacher_responses():
    method = _one_step(OFD)
    x = _TinyData().load_splits()["train"][0]
    responses = method.teacher(x, taps=["features.3"]).features["features.3"].double().transpose(0, 1).flatten(1)
    expected = ofd_margin(responses.mean(1), responses.std(1, correction=0)).float()
    torch.testing.assert_close(method.pairs[1].margin, expected)
    assert (method.pairs[1].margin < 0).all()


@pytest.mark.parametrize("method_cls", [AB, OFD])
def test_post_relu_taps_are_refused(method_cls):
    name = method_cls.__name__.lower()
    with pytest.raises(ValueError, match=rf"{name} needs the teacher's pre-activation \(pre-ReLU\) responses, but teacher "
                                         r"layer 'features.2' gave no negative value on 32 training rows"):
        _one_step(method_cls, teacher_layers=["features.2"], student_layers=["features.3"])


class _ParaphraserSnapshot(L.Callback):
    def on_train_start(self, trainer, method):
        self.state = {k: v.clone() for k, v in method.paraphraser.state_dict().items()}


def test_ft_trains_the_paraphraser_first_and_then_freezes_it():
    snapshot = _ParaphraserSnapshot()
    method = _one_step(FT, callbacks=[snapshot], paraphraser_epochs=0)
    assert not bool(method.paraphraser_trained)
    x = _TinyData().load_splits()["train"][0]
    features = method.teacher(x, taps=["features.5"]).features["features.5"]
    untrained = reconstruction_loss(method.paraphraser(features), features).item()
    method.paraphraser_epochs = 5
    method.train_paraphraser()
    assert bool(method.paraphraser_trained) and "paraphraser_reconstruction" in method.summary()
    assert reconstruction_loss(method.paraphraser(features), features).item() < untrained
    # The student's step leaves the paraphraser as its pre-training left it.
    trained = _one_step(FT, callbacks=[snapshot], paraphraser_epochs=2)
    assert all(torch.equal(v, snapshot.state[k]) for k, v in trained.paraphraser.state_dict().items())
