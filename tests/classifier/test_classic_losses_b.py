"""VID, NST, CC, FSP and CRD: parity with torchdistill 1.1.5 where it has the loss (imported
directly), closed forms on tiny hand-computed fixtures, and one training step of each method.

NST has no torchdistill counterpart; it is checked against an independent per-channel-pair loop
of the MMD's definition instead.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from anydistill.classifier.methods.cc import CC, cc_correlation, cc_loss
from anydistill.classifier.methods import crd
from anydistill.classifier.methods.crd import CRD, ContrastMemory, nce_loss, nce_scores, sample_negatives
from anydistill.classifier.methods.fsp import FSP, fsp_loss, fsp_matrix
from anydistill.classifier.methods.nst import NST, nst_loss
from anydistill.classifier.methods.vid import VID, VIDRegressor, build_vid_regressor, vid_loss, vid_variance
from anydistill.core.teacher import Teacher
from anydistill.data.tensor_data import TensorClassificationData
from anydistill.models.classifiers import small_cnn


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# VID


def test_vid_loss_matches_torchdistill():
    pytest.importorskip("torchdistill")
    from torchdistill.losses.mid_level import VIDLoss

    # torchdistill's Regressor4VID sits in torchdistill.models, which needs torchvision (not
    # installed): the loss is compared on our regressor's outputs, shaped as Regressor4VID returns them.
    torch.manual_seed(0)
    regressor = VIDRegressor(True, 6, 10, init_variance=5.0, eps=1e-5).double()
    regressor.log_scale.data.copy_(_randn(10, seed=1))
    f_s, f_t = _randn(4, 6, 5, 5, seed=2), _randn(4, 10, 5, 5, seed=3)
    mean, variance = regressor(f_s)
    pairs = {"p": {"student": {"io": "output", "path": "reg"}, "teacher": {"io": "output", "path": "layer"}, "weight": 1}}
    expected = VIDLoss(pairs)({"reg": {"output": (mean, variance.view(1, -1, 1, 1))}}, {"layer": {"output": f_t}})
    torch.testing.assert_close(vid_loss(mean, f_t, variance), expected, rtol=1e-5, atol=1e-5)


def test_vid_regressor_is_three_bias_free_1x1_convs():
    regressor = build_vid_regressor(torch.Size((2, 6, 5, 5)), torch.Size((2, 10, 3, 3)), 5.0, 1e-5)
    convs = [m for m in regressor.mean if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (6, 10, (1, 1), None), (10, 10, (1, 1), None), (10, 10, (1, 1), None)]
    linear = build_vid_regressor(torch.Size((2, 6)), torch.Size((2, 10)), 5.0, 1e-5)
    assert linear(torch.randn(3, 6))[0].shape == (3, 10)


def test_vid_variance_starts_at_init_variance():
    regressor = build_vid_regressor(torch.Size((2, 4, 3, 3)), torch.Size((2, 8, 3, 3)), init_variance=5.0, eps=1e-5)
    torch.testing.assert_close(vid_variance(regressor.log_scale.data.double(), 1e-5), torch.full((8,), 5.0, dtype=torch.float64))


def test_vid_loss_hand_computed():
    # 0.5 * ((t - mu)^2 / var + log var): (0 vs 1, var 1) -> 0.5; (0 vs 2, var 4) -> 0.5 + log 2.
    mean = torch.zeros(1, 2, dtype=torch.float64)
    target = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    variance = torch.tensor([1.0, 4.0], dtype=torch.float64)
    expected = (0.5 + (0.5 + math.log(2))) / 2
    torch.testing.assert_close(vid_loss(mean, target, variance), torch.tensor(expected, dtype=torch.float64))


def test_vid_refuses_mixed_feature_kinds():
    with pytest.raises(ValueError, match=r"vid pairs a student output \(16,\) with a teacher output \(8, 4, 4\)"):
        build_vid_regressor(torch.Size((2, 16)), torch.Size((2, 8, 4, 4)), 5.0, 1e-5)


# ---------------------------------------------------------------------------------------------
# NST


def _mmd_by_loops(f_s, f_t):
    """Squared MMD with k(a, b) = (a . b)^2, one channel pair at a time, averaged over the batch."""
    total = 0.0
    for s, t in zip(f_s, f_t):  # [C, H, W] each
        s = [c.flatten() / c.flatten().norm() for c in s]
        t = [c.flatten() / c.flatten().norm() for c in t]
        total += _mean_kernel(t, t) + _mean_kernel(s, s) - 2 * _mean_kernel(s, t)
    return total / len(f_s)


def _mean_kernel(xs, ys):
    return sum(float(x @ y) ** 2 for x in xs for y in ys) / (len(xs) * len(ys))


def test_nst_matches_the_mmd_definition():
    f_s, f_t = _randn(3, 4, 5, 5, seed=4), _randn(3, 7, 5, 5, seed=5)
    assert nst_loss(f_s, f_t).item() == pytest.approx(_mmd_by_loops(f_s, f_t), rel=1e-10)


def test_nst_pools_the_larger_map():
    f_s, f_t = _randn(2, 3, 8, 8, seed=6), _randn(2, 5, 4, 4, seed=7)
    assert nst_loss(f_s, f_t).item() == pytest.approx(_mmd_by_loops(F.adaptive_avg_pool2d(f_s, 4), f_t), rel=1e-10)


def test_nst_hand_computed():
    e1 = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    e2 = torch.tensor([0.0, 3.0], dtype=torch.float64).view(1, 1, 1, 2)
    diag = torch.tensor([1.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    assert nst_loss(e1, e1).item() == pytest.approx(0.0, abs=1e-12)
    assert nst_loss(e1, e2).item() == pytest.approx(2.0)  # 1 + 1 - 2 * 0
    assert nst_loss(diag, e1).item() == pytest.approx(1.0)  # 1 + 1 - 2 * (1 / sqrt 2)^2


# ---------------------------------------------------------------------------------------------
# CC


def _cckd(reduction):
    from torchdistill.losses.mid_level import CCKDLoss

    return CCKDLoss("s", "t", {"type": "gaussian", "gamma": 0.4, "max_p": 2}, reduction)


def test_cc_matches_torchdistill_cckd():
    pytest.importorskip("torchdistill")
    e_s, e_t = _randn(6, 5, seed=8), _randn(6, 5, seed=9)
    reference = _cckd("sum")
    torch.testing.assert_close(cc_correlation(e_s), reference.compute_cc_mat_by_gaussian_rbf(e_s), rtol=0, atol=1e-12)
    # torchdistill takes the unsquared Frobenius norm (torch.dist); the paper's loss is its square / B^2.
    distance = reference({"s": {"output": e_s}}, {"t": {"output": e_t}})
    torch.testing.assert_close(cc_loss(e_s, e_t), distance**2 / 36, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_cckd("batchmean")({"s": {"output": e_s}}, {"t": {"output": e_t}}), distance / 36)


def test_cc_hand_computed():
    a = math.exp(-0.8) * (1 + 0.8 + 0.32)  # f_i . f_j = 1: e^{-2g} (1 + 2g + (2g)^2 / 2)
    b = math.exp(-0.8)  # f_i . f_j = 0: only the p = 0 term
    e1, e2 = torch.eye(2, dtype=torch.float64)
    student, teacher = torch.stack([e1, e2]), torch.stack([e1, e1])
    torch.testing.assert_close(cc_correlation(student), torch.tensor([[a, b], [b, a]], dtype=torch.float64))
    assert cc_loss(student, teacher).item() == pytest.approx(2 * (a - b) ** 2 / 4)


def test_cc_correlation_tends_to_the_rbf_kernel_for_unit_vectors():
    f = F.normalize(_randn(5, 4, seed=10), dim=1)
    rbf = torch.exp(-0.4 * torch.cdist(f, f).pow(2))
    torch.testing.assert_close(cc_correlation(f, order=20), rbf, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# FSP


def test_fsp_matrix_matches_torchdistill():
    pytest.importorskip("torchdistill")
    from torchdistill.losses.mid_level import FSPLoss

    first, second = _randn(3, 4, 8, 8, seed=11), _randn(3, 6, 4, 4, seed=12)  # max-pooled to 4x4
    expected = FSPLoss.compute_fsp_matrix(first, second)
    assert fsp_matrix(first, second).shape == (3, 4, 6)
    torch.testing.assert_close(fsp_matrix(first, second), expected, rtol=0, atol=1e-12)


def test_fsp_hand_computed():
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    g_s = fsp_matrix(ones, 2 * ones)  # mean over 4 positions of 1 * 2
    torch.testing.assert_close(g_s, torch.full((1, 1, 1), 2.0, dtype=torch.float64))
    g_t = fsp_matrix(ones, ones)
    assert fsp_loss(g_s, g_t).item() == pytest.approx(1.0)
    # (1/B) sum of squared entries, B = 2: rows differ by 1 and 3 in one entry each.
    diff = torch.zeros(2, 2, 3, dtype=torch.float64)
    diff[0, 0, 0], diff[1, 1, 2] = 1.0, 3.0
    assert fsp_loss(diff, torch.zeros_like(diff)).item() == pytest.approx((1 + 9) / 2)


# ---------------------------------------------------------------------------------------------
# CRD


def _torchdistill_crd(dim, num_data, k):
    from torchdistill.losses.mid_level import CRDLoss

    return CRDLoss("s", "e", "t", input_size=dim, output_size=num_data, num_negative_samples=k,
                   num_samples=num_data, temperature=0.07, momentum=0.5, eps=1e-7)


def test_crd_matches_torchdistill_over_two_steps():
    pytest.importorskip("torchdistill")
    dim, num_data, k, batch = 16, 40, 8, 5
    torch.manual_seed(0)
    reference = _torchdistill_crd(dim, num_data, k)
    memory = ContrastMemory(num_data, dim)
    memory.student.copy_(reference.memory_v1)
    memory.teacher.copy_(reference.memory_v2)
    generator = torch.Generator().manual_seed(1)
    for step in range(2):  # the first step sets Z, the second reads the updated memory
        e_s = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
        e_t = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
        index = torch.randperm(num_data, generator=generator)[:batch]
        contrast = torch.cat([index.unsqueeze(1), torch.randint(num_data, (batch, k), generator=generator)], 1)
        expected = reference({"s": {"output": e_s}, "e": {"input": {"pos_idx": index, "contrast_idx": contrast}}},
                             {"t": {"output": e_t}})
        probs_s, probs_t = memory(e_s, e_t, contrast, temperature=0.07, momentum=0.5)
        ours = nce_loss(probs_s, num_data) + nce_loss(probs_t, num_data)
        torch.testing.assert_close(ours, expected.squeeze(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(memory.normalizers, reference.params[2:4], rtol=1e-6, atol=0)
        torch.testing.assert_close(memory.student, reference.memory_v1, rtol=0, atol=1e-6)
        torch.testing.assert_close(memory.teacher, reference.memory_v2, rtol=0, atol=1e-6)


def test_nce_scores_dense_and_gathered_paths_agree_with_gradients(monkeypatch):
    torch.manual_seed(0)
    memory = F.normalize(torch.randn(50, 8, dtype=torch.float64), dim=1)
    anchors = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1).requires_grad_()
    contrast = torch.randint(50, (4, 6))
    results = []
    for dense_up_to in (16, 0):  # 50 <= 16 * 6 scores every row; 0 forces the gather
        monkeypatch.setattr(crd, "DENSE_SCORES_UP_TO", dense_up_to)
        anchors.grad = None
        scores = nce_scores(memory, anchors, contrast, 0.07)
        (scores * torch.arange(6.0, dtype=torch.float64)).sum().backward()
        results.append((scores.detach(), anchors.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=0)


def test_nce_loss_hand_computed():
    # B = 1, K = 1, N = 2: K * P_n = 1/2; -(log(1 / 1.5) + log(0.5 / 1)) = log 3.
    probs = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    assert nce_loss(probs, num_data=2, eps=0.0).item() == pytest.approx(math.log(3))


def test_negatives_come_from_other_classes():
    torch.manual_seed(0)
    labels = torch.arange(30) % 3  # 20 rows of other classes for each class
    batch_labels = torch.tensor([0, 1, 2, 0])
    drawn = sample_negatives(labels, batch_labels, 20)
    assert (labels[drawn] != batch_labels.unsqueeze(1)).all()
    assert all(len(set(row.tolist())) == 20 for row in drawn)  # without replacement: every other-class row once
    assert sample_negatives(labels, batch_labels, 50).shape == (4, 50)  # more than the pool: with replacement


# ---------------------------------------------------------------------------------------------
# one training step of each method


class _TinyData(TensorClassificationData):
    input_shape = (1, 8, 8)
    num_classes = 4

    def load_splits(self):
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(40, 1, 8, 8, generator=generator), torch.arange(40) % 4
        return {"train": (x[:32], y[:32]), "val": (x[32:], y[32:]), "test": (x[32:], y[32:])}


def _one_step(method_cls, student_channels=(4, 8), **kwargs):
    L.seed_everything(0, verbose=False)
    teacher = Teacher(small_cnn((1, 8, 8), 4, channels=[8, 16], hidden=16))
    method = method_cls(small_cnn((1, 8, 8), 4, channels=list(student_channels), hidden=8), teacher, **kwargs)
    student_before = {k: v.clone() for k, v in method.student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(method, datamodule=_TinyData(batch_size=16))
    assert any(not torch.equal(v, student_before[k]) for k, v in method.student.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.model.state_dict().items())
    # The auxiliary modules live on the method (checkpointed, optimised), never in the student.
    assert set(method.student.state_dict()) == set(student_before)
    return method


@pytest.mark.parametrize(("method_cls", "kwargs", "aux"), [
    (VID, {}, "regressors."),
    (NST, {}, None),
    (CC, {}, "embed_t."),
    (FSP, {"fsp_epochs": 1}, None),
    (CRD, {"num_negatives": 8}, "memory."),
])
def test_one_training_step(method_cls, kwargs, aux):
    channels = (8, 16) if method_cls is FSP else (4, 8)  # FSP needs the teacher's widths
    method = _one_step(method_cls, student_channels=channels, **kwargs)
    if aux:
        assert any(k.startswith(aux) for k in method.state_dict())


def test_crd_one_step_sets_z_and_moves_the_memory():
    method = _one_step(CRD, num_negatives=8, kd_weight=1.0)
    assert (method.memory.normalizers > 0).all()
    for bank in (method.memory.student, method.memory.teacher):  # the step's 16 rows renormalised, the others not
        assert int(((bank.norm(dim=1) - 1).abs() < 1e-5).sum()) == 16


def test_crd_refuses_k_at_or_above_the_training_set_size():
    data = _TinyData()
    data.setup()
    method = CRD(small_cnn((1, 8, 8), 4), num_negatives=32)
    assert method.data_problems(data, None) == [
        "crd's num_negatives (32) must be below the training-set size (32): set num_negatives below 32."
    ]
    assert CRD(small_cnn((1, 8, 8), 4), num_negatives=31).data_problems(data, None) == []


def test_crd_refuses_data_without_row_indices():
    problems = CRD(small_cnn((1, 8, 8), 4)).data_problems(object(), None)
    assert len(problems) == 1 and "each training row's 'index'" in problems[0]
