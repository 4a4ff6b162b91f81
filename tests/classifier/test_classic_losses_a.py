"""Parity, closed-form and training-step tests of RKD, PKT, SP, DIST and logit-standardized KD.

References: torchdistill 1.1.5's `RKDLoss`, `PKTLoss`, `SPKDLoss`, `DISTLoss`, `LogitStdKDLoss`
(installed, imported inside the tests). Each loss also has a tiny case worked out by hand in the
comments, so that no test can pass by comparing an implementation with itself.
"""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from anydistill.catalog import METHODS
from anydistill.classifier.methods.dist import dist_loss
from anydistill.classifier.methods.logit_std import logit_std_kd_loss, standardize_logits
from anydistill.classifier.methods.pkt import pkt_loss
from anydistill.classifier.methods.rkd import rkd_angle_loss, rkd_distance_loss, rkd_loss
from anydistill.classifier.methods.sp import sp_loss
from anydistill.core.teacher import Teacher
from anydistill.models.classifiers import small_cnn

pytest.importorskip("torchdistill")


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _io(path, value, io="output"):
    return {path: {io: value}}


# ---------------------------------------------------------------------------------------------
# RKD


@pytest.mark.parametrize("distance_weight,angle_weight", [(25.0, 50.0), (1.0, 2.0), (1.0, 0.0), (0.0, 1.0)])
def test_rkd_matches_torchdistill(distance_weight, angle_weight):
    from torchdistill.losses.mid_level import RKDLoss

    # A conv-shaped student output and a wider flat teacher embedding: both are flattened.
    s, t = _randn(12, 3, 2, 2, seed=1), 3 * _randn(12, 20, seed=2)
    reference = RKDLoss("s", "t", dist_factor=distance_weight, angle_factor=angle_weight, reduction="mean")
    expected = reference(_io("s", s), _io("t", t))
    ours = rkd_loss(s, t, distance_weight=distance_weight, angle_weight=angle_weight)
    torch.testing.assert_close(ours, torch.as_tensor(expected, dtype=ours.dtype), rtol=0, atol=1e-5)


def test_rkd_hand_computed_triangle_against_a_line():
    # Student: (0,0), (1,0), (0,1). Pair distances 1, 1, sqrt2; mean mu_s = (2 + sqrt2) / 3.
    # Teacher: (0,0), (1,0), (2,0). Pair distances 1, 2, 1; mean 4/3 -> normalised 0.75, 1.5, 0.75.
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    mu_s = (2 + math.sqrt(2)) / 3
    # Differences 0.12868, -0.62132, 0.49264: all below 1, so Huber = x^2 / 2. Each pair appears
    # twice in the 3x3 matrix, the diagonal is 0 on both sides: L_D = sum(x^2) / 9 = 0.071699.
    diffs = [1 / mu_s - 0.75, 1 / mu_s - 1.5, math.sqrt(2) / mu_s - 0.75]
    distance = sum(x * x for x in diffs) / 9
    # Angles (vertex first): student 90, 45, 45 degrees -> cosines 0, sqrt2/2, sqrt2/2; teacher
    # (collinear) 0, 180, 0 degrees -> 1, -1, 1. Differences -1 (Huber 1/2), 1.7071 (Huber
    # |x| - 1/2 = 1.2071), -0.2929 (Huber 0.0429): sum 1.75 exactly, twice (both orders of the two
    # other points), over the 27 ordered triplets (the degenerate ones add 0): L_A = 3.5 / 27.
    angle = 3.5 / 27
    torch.testing.assert_close(rkd_distance_loss(s, t), torch.tensor(distance), rtol=0, atol=1e-6)
    torch.testing.assert_close(rkd_angle_loss(s, t), torch.tensor(angle), rtol=0, atol=1e-6)
    assert distance == pytest.approx(0.071699, abs=1e-6) and angle == pytest.approx(0.129630, abs=1e-6)
    torch.testing.assert_close(rkd_loss(s, t), torch.tensor(25 * distance + 50 * angle), rtol=0, atol=1e-5)


def test_rkd_is_invariant_to_scale_and_translation_of_the_teacher():
    s = _randn(6, 5, seed=3)
    assert rkd_loss(s, 7.0 * s + 3.0).item() == pytest.approx(0.0, abs=1e-5)


def test_rkd_needs_pairs_and_matching_batches():
    x = _randn(1, 4, seed=4)
    assert rkd_loss(x, x).item() == 0.0  # one sample: no pair (the references give NaN)
    with pytest.raises(ValueError, match="must have the same batch size"):
        rkd_loss(_randn(3, 4), _randn(4, 4))
    with pytest.raises(ValueError, match="The 'angle_weight' argument of rkd_loss"):
        rkd_loss(_randn(3, 4), _randn(3, 4), angle_weight=-1.0)


# ---------------------------------------------------------------------------------------------
# PKT


def test_pkt_matches_torchdistill():
    from torchdistill.losses.mid_level import PKTLoss

    s, t = _randn(16, 24, seed=5), _randn(16, 40, seed=6)
    reference = PKTLoss("s", "output", "t", "output", eps=1e-7)
    expected = reference(_io("s", s.clone()), _io("t", t.clone()))  # the reference writes into its inputs
    torch.testing.assert_close(pkt_loss(s, t), expected, rtol=0, atol=1e-5)


def test_pkt_hand_computed():
    # Student (1,0), (0,1), (1,0): cosines s1.s2 = 0, s1.s3 = 1, s2.s3 = 0; kernel (cos + 1) / 2
    # [[1, .5, 1], [.5, 1, .5], [1, .5, 1]], rows / sums 2.5, 2, 2.5:
    # q = [[.4, .2, .4], [.25, .5, .25], [.4, .2, .4]].
    # Teacher (1,0), (1,0), (0,1): kernel [[1, 1, .5], [1, 1, .5], [.5, .5, 1]], sums 2.5, 2.5, 2:
    # p = [[.4, .4, .2], [.4, .4, .2], [.25, .25, .5]].
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # sum p log(p / q) per row: .2 ln2 | .4 ln1.6 + .6 ln.8 | .25 ln.625 + .75 ln1.25; mean over 9.
    rows = [
        0.2 * math.log(2),
        0.4 * math.log(1.6) + 0.6 * math.log(0.8),
        0.25 * math.log(0.625) + 0.75 * math.log(1.25),
    ]
    expected = sum(rows) / 9
    assert expected == pytest.approx(0.026956, abs=1e-6)
    torch.testing.assert_close(pkt_loss(s, t), torch.tensor(expected), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# SP


def test_sp_matches_torchdistill_with_l2_row_normalisation(monkeypatch):
    from torchdistill.losses import mid_level

    # torchdistill 1.1.5 calls `normalize(G, 1)`, whose second positional argument is p: it
    # normalises the rows in L1. The paper and the official code (RepDistiller's `Similarity`,
    # mdistiller's `SP`) use F.normalize(G), L2 rows. Give it p = 2 and it agrees with ours.
    monkeypatch.setattr(mid_level, "normalize", lambda x, dim: F.normalize(x, p=2, dim=dim))
    s, t = _randn(16, 8, 4, 4, seed=7), _randn(16, 32, 2, 2, seed=8)
    reference = mid_level.SPKDLoss("s", "t", reduction="batchmean")
    torch.testing.assert_close(sp_loss(s, t), reference(_io("s", s), _io("t", t)), rtol=0, atol=1e-5)


def test_torchdistill_sp_normalises_rows_in_l1():
    from torchdistill.losses.mid_level import SPKDLoss

    # Pins the discrepancy above: unpatched, torchdistill's SPKDLoss is SP with L1 rows.
    s, t = _randn(16, 8, 4, 4, seed=7), _randn(16, 32, 2, 2, seed=8)

    def l1_rows(x):
        x = x.flatten(1)
        return F.normalize(x @ x.T, p=1, dim=1)

    expected = (l1_rows(t) - l1_rows(s)).pow(2).sum() / 16**2
    torch.testing.assert_close(SPKDLoss("s", "t", reduction="batchmean")(_io("s", s), _io("t", t)), expected)
    assert not torch.allclose(sp_loss(s, t), expected)


def test_sp_hand_computed():
    # Student rows (1,0), (0,1), (1,1): G = [[1,0,1], [0,1,1], [1,1,2]], row norms sqrt2, sqrt2, sqrt6.
    # Teacher rows (1,0), (1,0), (0,1): G = [[1,1,0], [1,1,0], [0,0,1]], row norms sqrt2, sqrt2, 1.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Row 0: [0, 1, -1]/sqrt2 -> 1. Row 1: [1, 0, -1]/sqrt2 -> 1.
    # Row 2: [0,0,1] - [1,1,2]/sqrt6 -> 1/6 + 1/6 + (1 - 2/sqrt6)^2 = 2 - 4/sqrt6.
    # ||G_t - G_s||_F^2 = 4 - 4/sqrt6 = 2.367007; divided by B^2 = 9.
    expected = (4 - 4 / math.sqrt(6)) / 9
    assert expected == pytest.approx(0.263001, abs=1e-6)
    torch.testing.assert_close(sp_loss(s, t), torch.tensor(expected), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# DIST


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (1.0, 0.0, 2.0)])
def test_dist_matches_torchdistill(beta, gamma, tau):
    from torchdistill.losses.mid_level import DISTLoss

    s, t = 3 * _randn(16, 10, seed=9), 3 * _randn(16, 10, seed=10)
    reference = DISTLoss("s", "output", "t", "output", beta=beta, gamma=gamma, tau=tau)
    expected = reference(_io("s", s), _io("t", t))
    ours = dist_loss(s, t, beta=beta, gamma=gamma, temperature=tau)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_dist_hand_computed():
    # Logits log p, so softmax gives p back. Student rows [.5, .25, .25], [.25, .25, .5];
    # teacher rows [.25, .5, .25], [.25, .25, .5].
    s = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]).log()
    t = torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]).log()
    # Rows, centred: s0 - 1/3 = [1/6, -1/12, -1/12], t0 - 1/3 = [-1/12, 1/6, -1/12];
    # dot = -1/48, both squared norms 1/24: Pearson -0.5. Row 1 is identical: 1.
    # inter = 1 - (-0.5 + 1) / 2 = 0.75.
    # Columns (2 samples): col 0 teacher [.25, .25] is constant -> 0; col 1 student constant -> 0;
    # col 2 [.25, .5] on both sides -> 1. intra = 1 - 1/3 = 2/3.
    torch.testing.assert_close(dist_loss(s, t), torch.tensor(0.75 + 2 / 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(dist_loss(s, t, beta=2.0, gamma=0.5), torch.tensor(1.5 + 1 / 3), rtol=0, atol=1e-6)
    # tau^2 factor: tau = 2 is 4 times the tau = 1 loss of the halved logits.
    z_s, z_t = _randn(4, 5, seed=11), _randn(4, 5, seed=12)
    torch.testing.assert_close(dist_loss(z_s, z_t, temperature=2.0), 4 * dist_loss(z_s / 2, z_t / 2))


# ---------------------------------------------------------------------------------------------
# logit standardization


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_logit_std_matches_torchdistill(temperature):
    from torchdistill.losses.mid_level import LogitStdKDLoss

    s, t = 3 * _randn(16, 10, seed=13), 5 * _randn(16, 10, seed=14) + 2
    labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(15))
    # torchdistill's example weights: alpha (CE) 0.5, beta (KD) 9; the CE and T^2 are in its loss.
    reference = LogitStdKDLoss("s", "o", "t", "o", temperature=temperature, alpha=0.5, beta=9.0)
    expected = reference(_io("s", s, "o"), _io("t", t, "o"), labels)
    ours = 0.5 * F.cross_entropy(s, labels) + 9.0 * logit_std_kd_loss(s, t, temperature=temperature)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_logit_std_hand_computed():
    # Student [1, 2, 3]: mean 2, sample std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1].
    # Teacher [0, 0, 6]: mean 2, deviations [-2, -2, 4], sample variance 24 / 2 = 12, std 2 sqrt3
    # -> [-1/sqrt3, -1/sqrt3, 2/sqrt3]. Second row: the same logits on both sides -> KL 0.
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    t = torch.tensor([[0.0, 0.0, 6.0], [0.0, 0.0, 6.0]])
    r3 = math.sqrt(3)
    torch.testing.assert_close(standardize_logits(s)[0], torch.tensor([-1.0, 0.0, 1.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(standardize_logits(t)[0], torch.tensor([-1 / r3, -1 / r3, 2 / r3]), rtol=0, atol=1e-6)

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    for tau in (1.0, 2.0):
        p_s = softmax([-1 / tau, 0.0, 1 / tau])
        p_t = softmax([-1 / r3 / tau, -1 / r3 / tau, 2 / r3 / tau])
        kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
        # tau^2 * (KL of row 0 + 0) / B, B = 2. At tau = 1 the KL is 0.044010.
        if tau == 1.0:
            assert kl == pytest.approx(0.044010, abs=1e-6)
        expected = tau**2 * kl / 2
        torch.testing.assert_close(logit_std_kd_loss(s, t, temperature=tau), torch.tensor(expected), rtol=0, atol=1e-6)


def test_logit_std_ignores_each_rows_scale_and_shift():
    s, t = _randn(8, 10, seed=16), _randn(8, 10, seed=17)
    scale, shift = torch.rand(8, 1, generator=torch.Generator().manual_seed(18)) * 5 + 0.1, _randn(8, 1, seed=19)
    torch.testing.assert_close(logit_std_kd_loss(scale * s + shift, t), logit_std_kd_loss(s, t), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# every loss: the teacher side is a target, low precision is upcast


LOSSES = {
    "rkd": lambda s, t: rkd_loss(s, t),
    "pkt": lambda s, t: pkt_loss(s, t),
    "sp": lambda s, t: sp_loss(s, t),
    "dist": lambda s, t: dist_loss(s, t, temperature=2.0),
    "logit-std": lambda s, t: logit_std_kd_loss(s, t),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_sends_no_gradient_to_the_teacher_and_upcasts(name):
    s = _randn(6, 10, seed=20).requires_grad_(True)
    t = _randn(6, 10, seed=21).requires_grad_(True)
    LOSSES[name](s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None
    low = LOSSES[name](s.detach().bfloat16(), t.detach().bfloat16())
    assert low.dtype == torch.float32 and torch.isfinite(low)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_of_a_single_sample_is_finite(name):
    s = _randn(1, 10, seed=22).requires_grad_(True)
    loss = LOSSES[name](s, _randn(1, 10, seed=23))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------------------------------------
# one training step of each method on tiny models


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n=24):
        self.x, self.y = _randn(n, 1, 8, 8, seed=24), torch.arange(n) % 10

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


STEP_KWARGS = {
    "rkd": {"teacher_layer": "classifier.2", "student_layer": "classifier.2"},
    "pkt": {"teacher_layer": "classifier.2", "student_layer": "classifier.2"},
    "sp": {"teacher_layer": "features.5", "student_layer": "features.5"},
    "dist": {},
    "logit-std": {},
}


@pytest.mark.parametrize("name", sorted(STEP_KWARGS))
def test_one_training_step_changes_the_student_not_the_teacher(name):
    L.seed_everything(0, verbose=False)
    teacher = Teacher(small_cnn((1, 8, 8), 10, channels=[8, 8], hidden=12))
    student = small_cnn((1, 8, 8), 10, channels=[4, 4], hidden=6)
    method = METHODS.get(name)(student=student, teacher=teacher, **STEP_KWARGS[name])
    assert method.family == "classifier" and method.paper
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    before_t = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(method, train_dataloaders=torch.utils.data.DataLoader(_Rows(), batch_size=12))
    assert any(not torch.equal(v, before_s[k]) for k, v in student.state_dict().items())
    assert all(torch.equal(v, before_t[k]) for k, v in teacher.model.state_dict().items())


@pytest.mark.parametrize("name", ["rkd", "pkt", "sp"])
def test_feature_methods_report_a_layer_without_features(name):
    method = METHODS.get(name)(student=small_cnn((1, 8, 8), 10), teacher=None, teacher_layer="a", student_layer="b")
    assert method.teacher_taps() == ["a"] and method.student_taps() == ["b"]
    problems = method.recipe_problems(
        teacher_shapes={"a": torch.Size([2])}, student_shapes={"b": torch.Size([2, 4])}, max_epochs=1
    )
    assert len(problems) == 1 and "teacher_layer 'a' gives (2,)" in problems[0] and "set teacher_layer" in problems[0]
