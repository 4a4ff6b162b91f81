"""Linear CKA (Kornblith et al. 2019): its invariances, hand-computed values, the HSIC form, and
the classifier evaluator's optional `cka_pairs`."""

import math

import pytest
import torch
from torch import nn

from anydistill.classifier.cka import linear_cka
from anydistill.classifier.evaluate import ClassifierEvaluator
from anydistill.core.teacher import Teacher


def _random(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(_random(d, d, seed))
    return q


def hsic_cka(x, y):
    """The kernel form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = x xᵀ, L = y yᵀ,
    HSIC(K, L) = tr(K H L H) / (n - 1)², H = I - 11ᵀ/n (uncentred inputs: H centres them)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l))


# (n, d1, d2): more examples than features (cross-covariance form) and fewer (Gram form).
SIZES = [(60, 7, 12), (9, 30, 25)]


@pytest.mark.parametrize(("n", "d1", "d2"), SIZES)
def test_self_similarity_is_one(n, d1, d2):
    x = _random(n, d1, 0) + 3.0  # an offset: the columns are centred first
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(x.float(), x.float())) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("n", "d1", "d2"), SIZES)
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(n, d1, d2):
    x, y = _random(n, d1, 1), _random(n, d2, 2)
    reference = float(linear_cka(x, y))
    transformed = 3.7 * x @ _orthogonal(d1, 3) + 5.0  # rotation, scale, and an offset the centring removes
    assert float(linear_cka(transformed, y)) == pytest.approx(reference, abs=1e-10)
    assert float(linear_cka(x, 0.01 * y @ _orthogonal(d2, 4))) == pytest.approx(reference, abs=1e-10)
    assert float(linear_cka(x, transformed)) == pytest.approx(1.0, abs=1e-10)
    # ... but not to a non-isotropic scaling of the features.
    stretched = x * torch.linspace(0.1, 10.0, d1, dtype=torch.float64)
    assert float(linear_cka(x, stretched)) < 0.99


def test_hand_computed():
    # One feature each: centred x = (-1, 0, 1), y = (-1, 1, 0); YᵀX = 1, XᵀX = YᵀY = 2:
    # CKA = 1² / (2 * 2) = 0.25 (the squared Pearson correlation, 0.5²).
    assert float(linear_cka(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [3.0], [2.0]]))) == pytest.approx(0.25)
    # x: four points on the axes (already centred), y: their first coordinate.
    # XᵀX = 2 I (||.||_F = 2 sqrt 2), YᵀY = 2, YᵀX = (2, 0): CKA = 4 / (2 sqrt 2 * 2) = 1 / sqrt 2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert float(linear_cka(x, x[:, :1])) == pytest.approx(1 / math.sqrt(2))
    # Orthogonal (uncorrelated) representations: 0.
    assert float(linear_cka(x[:, :1], x[:, 1:])) == pytest.approx(0.0)


@pytest.mark.parametrize(("n", "d1", "d2"), SIZES + [(40, 40, 3)])
def test_matches_the_hsic_form(n, d1, d2):
    for seed in range(3):
        x, y = _random(n, d1, 10 + seed) * 2 + 1, _random(n, d2, 20 + seed)
        y[:, 0] += x[:, 0]  # some shared signal, so the value is not near 0
        assert float(linear_cka(x, y)) == pytest.approx(float(hsic_cka(x, y)), abs=1e-5)
        assert float(linear_cka(x.float(), y.float())) == pytest.approx(float(hsic_cka(x, y)), abs=1e-5)


def test_shapes_and_degenerate_inputs():
    value = linear_cka(torch.randn(5, 3), torch.randn(5, 4))
    assert value.dim() == 0 and value.dtype == torch.float64 and 0.0 <= float(value) <= 1.0
    with pytest.raises(ValueError, match="same N"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"\[N, D1\]"):
        linear_cka(torch.randn(5, 3, 2), torch.randn(5, 3))
    assert math.isnan(float(linear_cka(torch.ones(5, 3), torch.randn(5, 3))))  # constant: no alignment


# ---------------------------------------------------------------------------------------------
# The evaluator's cka_pairs


class _Data:
    """The two splits the evaluator reads."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(300, 6, generator=generator), torch.randint(0, 3, (300,), generator=generator)

    def split(self, name):
        return self.x, self.y


def _net(hidden, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_evaluator_reports_cka_pairs():
    data = _Data()
    teacher = Teacher(_net(16, 0))
    evaluator = ClassifierEvaluator(data, cka_pairs=[["1", "1"], ["0", "0"], ["2", "2"]])
    copy = _net(16, 0)  # the teacher's own weights in another module: identical representations
    row = evaluator.evaluate(copy, teacher, "kd")
    assert row["cka/1~1"] == pytest.approx(1.0) and row["cka/0~0"] == pytest.approx(1.0)
    other = evaluator.evaluate(_net(4, 1), teacher, "scratch")
    for key in ("cka/1~1", "cka/0~0", "cka/2~2"):
        assert 0.0 <= other[key] <= 1.0
    with torch.no_grad():
        expected = linear_cka(teacher.model[:2](data.x), _net(4, 1)[:2](data.x))
    assert other["cka/1~1"] == pytest.approx(float(expected), abs=1e-6)
    # The teacher's own row, and a row without a teacher, get none.
    assert not any(key.startswith("cka/") for key in evaluator.evaluate(teacher.model, teacher, "teacher"))
    assert not any(key.startswith("cka/") for key in evaluator.evaluate(copy, None, "scratch"))


def test_evaluator_without_cka_pairs_is_unchanged():
    data, teacher = _Data(), Teacher(_net(16, 0))
    row = ClassifierEvaluator(data).evaluate(_net(4, 1), teacher, "kd")
    assert set(row) == {"accuracy", "ece", "params", "latency_ms", "threads", "teacher_agreement", "val_accuracy"}


def test_cka_pairs_problems_name_the_fix():
    assert ClassifierEvaluator.settings_problems({"cka_pairs": [["a", "b"], ["c"]]}) == [
        "cka_pairs: each entry is [teacher_layer, student_layer]; got ['c']."]
    assert ClassifierEvaluator.settings_problems({"cka_pairs": None}) == []
    problems = ClassifierEvaluator.model_problems({"cka_pairs": [["1", "7"]]}, teacher_model=_net(16, 0), student_model=_net(4, 1))
    assert len(problems) == 1 and "the student's Sequential has no module '7'" in problems[0]
    assert "add a `teacher:` section" in ClassifierEvaluator.model_problems(
        {"cka_pairs": [["1", "1"]]}, teacher_model=None, student_model=_net(4, 1))[0]
    assert ClassifierEvaluator.model_problems({"cka_pairs": None}, teacher_model=None, student_model=None) == []


def test_validate_refuses_a_cka_layer_the_models_lack():
    from anydistill.catalog import load_recipe
    from anydistill.core.errors import RecipeError

    assert load_recipe("mnist1d/kd").evaluation.kwargs["cka_pairs"] == [["penultimate", "4"]]
    with pytest.raises(RecipeError, match="evaluation: cka_pairs: the student's Sequential has no module '9'"):
        load_recipe("mnist1d/kd", ["evaluation.cka_pairs=[[penultimate, '9']]"])
