"""CIFAR-100 from a local python release: read from a small fake folder of the same format."""

import pickle

import numpy as np
import pytest
import torch

from anydistill.core.errors import DataNotFoundError
from anydistill.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD, CIFAR100Data
from anydistill.data.tensor_data import IndexedTensors, random_flip
from anydistill.registries import DATA


def write_fake_cifar100(root, train=200, test=50, seed=0):
    """A ``cifar-100-python`` folder with ``train`` / ``test`` / ``meta`` pickles in the official
    layout (bytes keys, rows of 3072 uint8: the R, G, B planes); labels cycle through 100 classes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        entry = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"fine_labels": [i % 100 for i in range(count)],
                 b"coarse_labels": [i % 20 for i in range(count)]}
        with (root / name).open("wb") as handle:
            pickle.dump(entry, handle)
    with (root / "meta").open("wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, handle)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fake_cifar100(tmp_path_factory.mktemp("cifar") / "cifar-100-python")


def test_registered_with_its_shapes():
    assert DATA.get("cifar100") is CIFAR100Data
    assert CIFAR100Data.input_shape == (3, 32, 32) and CIFAR100Data.num_classes == 100
    assert CIFAR100Data.augment_shift == 4 and CIFAR100Data.augment_flip


def test_splits_hold_out_a_stratified_validation_set(root):
    data = CIFAR100Data(root=str(root), val_count=50)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (data.split(name) for name in ("train", "val", "test"))
    assert x_train.shape == (150, 3, 32, 32) and x_val.shape == (50, 3, 32, 32) and x_test.shape == (50, 3, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert y_test.tolist() == [i % 100 for i in range(50)]  # the official test rows, in order
    # 50 of 100 classes x 2 images: one image of each of the first 50 classes, as balanced_subset draws.
    assert torch.bincount(y_val, minlength=100).tolist() == [1] * 50 + [0] * 50
    # train + val partition the official training rows, none lost or repeated.
    together = torch.cat([x_train, x_val]).flatten(1)
    assert torch.unique(together, dim=0).shape[0] == 200
    # The draw is fixed (seed 0), whatever the run's seed.
    assert torch.equal(CIFAR100Data(root=str(root), val_count=50, seed=7).split("val")[0], x_val)


def test_pixels_are_normalised_per_channel_from_the_rgb_planes(root):
    with (root / "test").open("rb") as handle:
        raw = pickle.load(handle, encoding="bytes")[b"data"]
    x = CIFAR100Data(root=str(root), val_count=50).split("test")[0]
    pixel = raw[3].reshape(3, 32, 32)[:, 5, 7] / 255  # row 3, pixel (5, 7): R, G and B are 1024 bytes apart
    expected = (pixel - np.array(CIFAR100_MEAN)) / np.array(CIFAR100_STD)
    torch.testing.assert_close(x[3, :, 5, 7], torch.tensor(expected, dtype=torch.float32))


def test_missing_folder_is_one_line_naming_the_download(tmp_path):
    with pytest.raises(ValueError) as error:
        CIFAR100Data(root=str(tmp_path / "nowhere")).setup()
    message = str(error.value)
    assert isinstance(error.value, DataNotFoundError) and "\n" not in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message and "data.root" in message


def test_val_count_must_leave_training_rows(root):
    with pytest.raises(ValueError, match="val_count=200"):
        CIFAR100Data(root=str(root), val_count=200).setup()


def test_augmentation_crops_and_flips_and_keeps_labels(root):
    torch.manual_seed(0)
    data = CIFAR100Data(root=str(root), val_count=50, batch_size=32, augment=True)
    x, y = data.split("train")
    loader = data.train_dataloader()
    assert loader.dataset.max_shift == 4 and loader.dataset.flip
    batch = next(iter(loader))
    assert torch.equal(batch["y"], y[batch["index"]])
    assert not torch.equal(batch["x"], x[batch["index"]])
    # Without augment the loader serves the rows as stored.
    plain = next(iter(CIFAR100Data(root=str(root), val_count=50, batch_size=32).train_dataloader()))
    assert torch.equal(plain["x"], x[plain["index"]])


def test_flip_mirrors_about_half_of_the_images():
    torch.manual_seed(0)
    x = torch.randn(200, 3, 4, 4)
    flipped = random_flip(x)
    mirrored = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(flipped, x)])
    assert bool((mirrored | kept).all()) and 70 < int(mirrored.sum()) < 130
    batch = IndexedTensors(x, torch.arange(200), flip=True).__getitems__(list(range(10)))
    assert torch.equal(batch["y"], torch.arange(10))
