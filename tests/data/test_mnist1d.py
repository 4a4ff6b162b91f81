"""MNIST-1D: generated offline by the `mnist1d` package, split deterministically, 10 % stratified validation."""

import random
import sys

import numpy as np
import pytest
import torch

from anydistill.core.errors import MissingPackageError
from anydistill.data.mnist1d import MNIST1DData, make_mnist1d_arrays
from anydistill.registries import DATA


@pytest.fixture(scope="module")
def arrays():
    return make_mnist1d_arrays()


@pytest.fixture(scope="module")
def data():
    module = MNIST1DData(batch_size=64)
    module.setup()  # one generation (~1 s)
    return module


def test_registered_with_its_shapes():
    assert DATA.get("mnist1d") is MNIST1DData
    assert MNIST1DData.input_shape == (1, 40) and MNIST1DData.num_classes == 10


def test_split_sizes_shapes_and_dtypes(data):
    sizes = {name: data.split(name)[0].shape[0] for name in ("train", "val", "test")}
    assert sizes == {"train": 3601, "val": 399, "test": 1000}  # the generator's 4,000 + 1,000
    for name in ("train", "val", "test"):
        x, y = data.split(name)
        assert x.shape[1:] == (1, 40) and x.dtype == torch.float32
        assert y.shape == (x.shape[0],) and y.dtype == torch.int64
        assert set(y.tolist()) == set(range(10))
    # The generator standardises all 5,000 signals together; the training rows come out near it.
    x = data.split("train")[0]
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_splits_are_the_generators_rows(data, arrays):
    x_test, y_test = data.split("test")
    torch.testing.assert_close(x_test[:, 0], torch.tensor(arrays["x_test"], dtype=torch.float32))
    assert y_test.tolist() == arrays["y_test"].tolist()
    # train + val partition the generator's training rows: none lost, none repeated.
    together = torch.cat([data.split("train")[0], data.split("val")[0]])[:, 0]
    generated = torch.tensor(arrays["x"], dtype=torch.float32)
    assert together.shape == generated.shape
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, generated.tolist()))


def test_validation_split_is_stratified(data):
    y_train, y_val = data.split("train")[1], data.split("val")[1]
    per_class = torch.bincount(torch.cat([y_train, y_val]), minlength=10)
    val_counts = torch.bincount(y_val, minlength=10)
    # round(10 % of each class), so every class keeps its share (class sizes 394..411).
    assert val_counts.tolist() == [round(0.1 * int(n)) for n in per_class]


def test_deterministic_and_independent_of_the_run_seed(data):
    other = MNIST1DData(seed=123, batch_size=7)  # a fresh generation with another run seed
    for name in ("train", "val", "test"):
        assert torch.equal(other.split(name)[0], data.split(name)[0])
        assert torch.equal(other.split(name)[1], data.split(name)[1])


def test_split_seed_redraws_validation_only(data, arrays, monkeypatch):
    monkeypatch.setattr("anydistill.data.mnist1d.make_mnist1d_arrays", lambda: arrays)  # no second generation
    other = MNIST1DData(split_seed=1)
    assert torch.equal(other.split("test")[0], data.split("test")[0])
    assert not torch.equal(other.split("val")[0], data.split("val")[0])
    assert torch.bincount(other.split("val")[1], minlength=10).tolist() == torch.bincount(data.split("val")[1], minlength=10).tolist()


def test_generated_offline_without_touching_the_global_random_state(monkeypatch, tmp_path):
    import mnist1d.data
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D must be generated, not downloaded")

    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.chdir(tmp_path)  # get_dataset would write ./mnist1d_data.pkl
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    assert make_mnist1d_arrays()["x"].shape == (4000, 40)  # mnist1d reseeds both with 42 internally
    assert (random.random(), np.random.rand()) == expected
    assert list(tmp_path.iterdir()) == []


def test_training_batches(data):
    batch = next(iter(data.train_dataloader()))
    assert batch["x"].shape == (64, 1, 40) and batch["y"].shape == (64,) and batch["index"].shape == (64,)


def test_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(MissingPackageError, match="pip install --no-deps mnist1d"):
        MNIST1DData().setup()
    assert "pip install --no-deps mnist1d" in MNIST1DData.missing_package()
