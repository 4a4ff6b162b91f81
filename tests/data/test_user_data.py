"""The data modules over users' files: what each reads, its splits and standardisation, and the
one-line errors for bad files (missing column, fractional labels, empty class folder...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from anydistill.core.recipe import validate_kwargs
from anydistill.data.arrays import encode_labels, held_out_split
from anydistill.data.hf_dataset import HFDatasetData
from anydistill.data.image_folder import ImageFolderData
from anydistill.data.tabular import CSVData, ParquetData
from anydistill.data.tensor_files import TensorFileData
from anydistill.data.text_classification import TextClassificationData
from user_files import image_arrays, write_bert_folder, write_image_folder, write_table, write_texts


def test_csv_one_file_held_out_splits_are_seeded_stratified_and_standardised_on_train(tmp_path) -> None:
    write_table(tmp_path / "t.csv", rows=100)
    data = CSVData(train=str(tmp_path / "t.csv"), label="species", val_fraction=0.2, test_fraction=0.3, split_seed=1)
    assert data.input_shape == (3,) and data.num_classes == 3 and data.class_names == ["a", "b", "c"]
    sizes = {name: len(data.split(name)[1]) for name in ("train", "val", "test")}
    assert sum(sizes.values()) == 100 and 17 <= sizes["val"] <= 23 and 27 <= sizes["test"] <= 33
    x_train = data.split("train")[0]
    assert torch.allclose(x_train.mean(0), torch.zeros(3), atol=1e-5)  # fitted on train...
    assert torch.allclose(x_train.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    assert not torch.allclose(data.split("test")[0].mean(0), torch.zeros(3), atol=1e-3)  # ...not on test
    again = CSVData(train=str(tmp_path / "t.csv"), label="species", val_fraction=0.2, test_fraction=0.3, split_seed=1)
    assert torch.equal(again.split("test")[0], data.split("test")[0])
    other = CSVData(train=str(tmp_path / "t.csv"), label="species", val_fraction=0.2, test_fraction=0.3, split_seed=2)
    assert not torch.equal(other.split("test")[0], data.split("test")[0])
    for name in ("train", "val", "test"):
        assert set(data.split(name)[1].tolist()) == {0, 1, 2}  # stratified: every class in every split


def test_files_per_split_and_feature_columns_and_parquet(tmp_path) -> None:
    for name, seed in (("train", 0), ("val", 1), ("test", 2)):
        write_table(tmp_path / f"{name}.parquet", rows=30, seed=seed)
    data = ParquetData(train=str(tmp_path / "train.parquet"), val=str(tmp_path / "val.parquet"), test=str(tmp_path / "test.parquet"),
                       label="species", features=["f2", "f0"])
    assert data.input_shape == (2,) and [len(data.split(n)[1]) for n in ("train", "val", "test")] == [30, 30, 30]
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "train.parquet")
    assert np.corrcoef(data.split("train")[0][:, 1].numpy(), frame["f0"].to_numpy())[0, 1] > 0.999


def test_labels_ints_kept_strings_sorted_fractions_refused() -> None:
    encoded, names = encode_labels({"train": np.array([2, 0, 5])}, "labels")
    assert names is None and encoded["train"].tolist() == [2, 0, 5]
    encoded, names = encode_labels({"train": np.array(["pos", "neg"], dtype=object), "test": np.array(["neu"], dtype=object)}, "labels")
    assert names == ["neg", "neu", "pos"] and encoded["train"].tolist() == [2, 0] and encoded["test"].tolist() == [1]
    assert encode_labels({"train": np.array([1.0, 0.0])}, "labels")[0]["train"].dtype == np.int64
    with pytest.raises(ValueError, match="non-integer numbers.*1.5"):
        encode_labels({"train": np.array([1.5, 0.0])}, "labels")
    with pytest.raises(ValueError, match="negative"):
        encode_labels({"train": np.array([-1, 0])}, "labels")


def test_held_out_split_partitions_the_rows() -> None:
    y = np.arange(50) % 5
    parts = held_out_split(y, {"val": 0.2, "test": 0.2}, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(50))
    assert len(parts["val"]) == len(parts["test"]) == 10


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_held_out_fraction_outside_open_interval_is_a_validation_error(fraction) -> None:
    _, problems = validate_kwargs(CSVData, {"train": "t.csv", "val_fraction": fraction}, owner="data module 'csv'", where="data")
    assert len(problems) == 1 and "val_fraction" in problems[0]


def test_csv_errors_are_one_line_and_name_the_fix(tmp_path) -> None:
    write_table(tmp_path / "t.csv")
    with pytest.raises(ValueError, match=r"no column 'kind'; its columns are: f0, f1, f2, species"):
        CSVData(train=str(tmp_path / "t.csv"), label="kind").setup()
    with pytest.raises(ValueError, match="no such file"):
        CSVData(train=str(tmp_path / "nowhere.csv")).setup()
    with pytest.raises(ValueError, match="non-integer"):
        CSVData(train=str(tmp_path / "t.csv"), label="f1", features=["f0"]).setup()
    with pytest.raises(ValueError, match="'species' is not numeric"):
        CSVData(train=str(tmp_path / "t.csv"), label="f1", features=["f0", "species"]).setup()


def test_image_folder_reads_resizes_and_standardises_per_channel(tmp_path) -> None:
    write_image_folder(tmp_path / "imgs", per_class=10, size=10)
    data = ImageFolderData(train=str(tmp_path / "imgs"), size=[6, 8], mode="rgb")
    assert data.input_shape == (3, 6, 8) and data.num_classes == 2 and data.class_names == ["cat", "dog"]
    x = data.split("train")[0]
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert len(data.normalisation["mean"]) == 3
    gray = ImageFolderData(train=str(tmp_path / "imgs"), size=4, mode="grayscale")
    assert gray.input_shape == (1, 4, 4)


def test_image_folder_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderData(train=str(tmp_path / "empty")).setup()
    write_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "bird").mkdir()
    with pytest.raises(ValueError, match="class folder 'bird' .* holds no images"):
        ImageFolderData(train=str(tmp_path / "imgs")).setup()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_tensor_files_with_own_key_names(tmp_path, suffix) -> None:
    x, y = image_arrays()
    path = tmp_path / f"d{suffix}"
    if suffix == ".npz":
        np.savez(path, images=x, labels=y)
    else:
        save_file({"images": x, "labels": y}, str(path))
    data = TensorFileData(train=str(path), x_key="images", y_key="labels", standardize=False)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 4
    assert sum(len(data.split(n)[1]) for n in ("train", "val", "test")) == 80
    with pytest.raises(ValueError, match="no array 'x', 'y'; it holds: images, labels"):
        TensorFileData(train=str(path)).setup()


def test_uint8_images_in_a_tensor_file_become_floats_in_0_1(tmp_path) -> None:
    x = np.full((20, 1, 4, 4), 255, dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=x, y=np.arange(20) % 2)
    data = TensorFileData(train=str(tmp_path / "u8.npz"), standardize=False)
    images, _ = data.split("train")
    assert images.dtype == torch.float32 and float(images.max()) == 1.0


def test_hf_dataset_from_disk_uses_its_splits(tmp_path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    def part(n):
        return datasets.Dataset.from_dict({"a": rng.normal(size=n), "b": rng.normal(size=n), "label": (np.arange(n) % 2).tolist()})
    datasets.DatasetDict({"train": part(20), "validation": part(6)}).save_to_disk(str(tmp_path / "dd"))
    data = HFDatasetData(path=str(tmp_path / "dd"), features=["a", "b"], test_fraction=0.25)
    assert [len(data.split(n)[1]) for n in ("train", "val", "test")] == [16, 6, 4]  # test drawn from train: round(0.25 * 10) per class
    with pytest.raises(ValueError, match="no column 'lbl'; its columns are: a, b, label"):
        HFDatasetData(path=str(tmp_path / "dd"), label="lbl").setup()


def test_text_classification_tokenizes_with_the_teachers_tokenizer(tmp_path) -> None:
    folder = write_bert_folder(tmp_path / "bert")
    write_texts(tmp_path / "reviews.csv")
    data = TextClassificationData(path=str(tmp_path / "reviews.csv"), tokenizer=str(folder), text="review", label="sentiment", max_length=6)
    x, y = data.split("train")
    assert x.dtype == torch.long and data.input_shape == (6,) and data.class_names == ["neg", "neu", "pos"]
    assert (x[:, 0] == 2).all() and data.pad_id == 0  # [CLS] first; padding with [PAD] = 0
    with pytest.raises(ValueError, match="no column 'text'; its columns are: review, sentiment"):
        TextClassificationData(path=str(tmp_path / "reviews.csv"), tokenizer=str(folder), label="sentiment").setup()
