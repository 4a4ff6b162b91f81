"""The frozen teacher wrapper and feature taps."""

import pytest
import torch
from torch import nn

from anydistill.classifier.methods.kd import KD
from anydistill.core.taps import capture_features, find_module
from anydistill.core.teacher import Teacher, TeacherOutput
from anydistill.models.classifiers import mlp, small_cnn


def _net(seed=0, dropout=0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(dropout)),
        nn.Linear(8, 3),
    )


def _x(batch=5, seed=1):
    return torch.randn(batch, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_teacher_is_frozen():
    model = _net().train()
    teacher = Teacher(model, name="t")
    assert teacher.model is model
    assert not model.training and all(not m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())
    x = _x().requires_grad_(True)
    out = teacher(x)
    assert isinstance(out, TeacherOutput)
    assert out.logits.shape == (5, 3)
    assert not out.logits.requires_grad and out.logits.grad_fn is None
    assert out.features == {}
    torch.testing.assert_close(out.logits, model(x).detach())


def test_teacher_returns_tapped_features_by_module_path():
    model = _net()
    teacher = Teacher(model)
    x = _x()
    out = teacher(x, taps=["1.0", "1.1", "2"])
    assert set(out.features) == {"1.0", "1.1", "2"}
    hidden = model[1][0](x.flatten(1))
    torch.testing.assert_close(out.features["1.0"], hidden)
    torch.testing.assert_close(out.features["1.1"], hidden.relu())
    torch.testing.assert_close(out.features["2"], out.logits)
    assert all(not f.requires_grad for f in out.features.values())
    # Hooks are gone afterwards: a plain forward captures nothing and leaves no hook behind.
    assert all(not m._forward_hooks for m in model.modules())


def test_teacher_stays_in_eval_mode_after_someone_calls_train():
    model = _net(dropout=0.9)
    teacher = Teacher(model)
    x = _x(64)
    reference = teacher(x).logits
    model.train()  # e.g. a user, or a framework walking modules
    out = teacher(x)
    assert not model.training and not model[1][2].training
    torch.testing.assert_close(out.logits, reference, rtol=0, atol=0)  # dropout did not act


def test_teacher_is_not_part_of_a_method():
    student = mlp((1, 4, 4), 3, hidden=[8])
    teacher = Teacher(_net())
    method = KD(student=student, teacher=teacher)
    assert method.teacher is teacher
    keys = list(method.state_dict())
    assert keys and all(k.startswith("student.") for k in keys)
    assert set(keys) == {f"student.{k}" for k in student.state_dict()}
    teacher_ids = {id(p) for p in teacher.model.parameters()}
    method_params = list(method.parameters())
    assert not teacher_ids & {id(p) for p in method_params}
    assert {id(p) for p in method_params} == {id(p) for p in student.parameters()}
    # Lightning's train() on the method does not reach the teacher either.
    method.train()
    assert student.training and not teacher.model.training


def test_fingerprint_is_stable_and_depends_on_weights():
    a, b = Teacher(_net(seed=0)), Teacher(_net(seed=0))
    assert a.fingerprint() == a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    a(_x())  # a forward changes nothing
    assert a.fingerprint() == b.fingerprint()
    changed = _net(seed=0)
    with torch.no_grad():
        changed[2].weight[0, 0] += 1e-3
    assert Teacher(changed).fingerprint() != a.fingerprint()
    assert Teacher(_net(seed=1)).fingerprint() != a.fingerprint()


def test_fingerprint_covers_buffers_and_architecture():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.register_buffer("scale", torch.ones(4))

        def forward(self, x):
            return self.linear(x) * self.scale

    torch.manual_seed(0)
    model = WithBuffer()
    before = Teacher(model).fingerprint()
    changed = WithBuffer()
    changed.load_state_dict(model.state_dict())
    assert Teacher(changed).fingerprint() == before
    changed.scale += 1
    assert Teacher(changed).fingerprint() != before
    # Same weights, another architecture class: another fingerprint.
    class OtherLinear(nn.Linear):
        pass

    other = OtherLinear(4, 4)
    other.load_state_dict(model.linear.state_dict())
    assert Teacher(other).fingerprint() != Teacher(model.linear).fingerprint()


def test_fingerprint_of_a_batchnorm_teacher():
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = Teacher(bn).fingerprint()
    changed = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    changed.load_state_dict(bn.state_dict())
    assert Teacher(changed).fingerprint() == before
    changed[1].running_mean += 1
    assert Teacher(changed).fingerprint() != before


def test_fingerprint_follows_an_in_place_weight_change():
    teacher = Teacher(_net())
    before = teacher.fingerprint()
    with torch.no_grad():
        teacher.model[2].weight[0, 0] += 1.0
    assert teacher.fingerprint() != before


def test_num_parameters_and_to():
    teacher = Teacher(_net())
    assert teacher.num_parameters() == 16 * 8 + 8 + 8 * 3 + 3
    assert teacher.to("cpu") is teacher and not teacher.model.training


# ---------------------------------------------------------------------------------------------
# taps


def test_capture_features_removes_its_hooks():
    model = small_cnn((1, 8, 8), 10)
    x = torch.randn(2, 1, 8, 8)
    with capture_features(model, ["features.0", "classifier.2"]) as captured:
        assert model.features[0]._forward_hooks and model.classifier[2]._forward_hooks
        logits = model(x)
    assert set(captured) == {"features.0", "classifier.2"}
    assert captured["features.0"].shape == (2, 8, 8, 8)
    assert captured["features.0"].requires_grad  # gradients kept for student taps
    assert logits.shape == (2, 10)
    assert all(not m._forward_hooks for m in model.modules())
    model(x)  # no longer captured
    assert captured["features.0"].shape == (2, 8, 8, 8)


def test_capture_features_removes_hooks_on_error():
    model = small_cnn((1, 8, 8), 10)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_features(model, ["features.0"]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    # A bad second path removes the hook already registered on the first.
    with pytest.raises(LookupError):
        with capture_features(model, ["features.0", "features.99"]):
            pass
    assert all(not m._forward_hooks for m in model.modules())


def test_find_module_returns_the_submodule():
    model = small_cnn((1, 8, 8), 10)
    assert find_module(model, "features.3") is model.features[3]
    assert find_module(model, "classifier") is model.classifier


def test_find_module_error_suggests_close_paths():
    model = small_cnn((1, 8, 8), 10)
    with pytest.raises(LookupError) as info:
        find_module(model, "feature.3")
    message = str(info.value)
    assert message.startswith("SmallCNN has no module 'feature.3'. Did you mean 'features.3'")
    assert "Its modules: features, features.0" in message
    assert "\n" not in message
    with pytest.raises(LookupError, match="has no module 'features.9'"):
        find_module(model, "features.9")
