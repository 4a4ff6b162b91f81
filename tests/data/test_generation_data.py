"""Users' generation data: image folders (class subfolders or flat), tensor files with or without
labels, 2-D point files; scaled to [-1, 1] (images), seeded held-out splits, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anydistill.data.generation_files import ImageFolderGenerationData, PointsData, TensorGenerationData


def write_pngs(root: Path, per_class: dict[str, int], size: int = 6, mode: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in per_class.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return root


def test_image_folder_classes_and_flat(tmp_path):
    root = write_pngs(tmp_path / "classes", {"cat": 10, "dog": 10})
    data = ImageFolderGenerationData(str(root), size=8, mode="grayscale", val_fraction=0.2, test_fraction=0.2, split_seed=1)
    data.setup()
    x, y = data.split("train")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 2 and x.shape[0] == 12
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5  # [0, 255] -> [-1, 1]
    assert sorted(y.tolist()) == [0] * 6 + [1] * 6
    again = ImageFolderGenerationData(str(root), size=8, mode="grayscale", val_fraction=0.2, test_fraction=0.2, split_seed=1)
    again.setup()
    assert torch.equal(again.split("test")[0], data.split("test")[0])  # the held-out draw is seeded
    flat = write_pngs(tmp_path / "flat", {"": 10}, mode="RGB")
    data = ImageFolderGenerationData(str(flat), size=[4, 6])
    data.setup()
    assert data.input_shape == (3, 4, 6) and data.num_classes == 0  # unconditional
    assert (data.split("train")[1] == 0).all()


def test_image_folder_refusals(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderGenerationData(str(tmp_path / "empty")).setup()
    root = write_pngs(tmp_path / "classes", {"cat": 3})
    (root / "dog").mkdir()
    with pytest.raises(ValueError, match="'dog' of .* holds no images"):
        ImageFolderGenerationData(str(root)).setup()
    with pytest.raises(ValueError, match="no such folder"):
        ImageFolderGenerationData(str(tmp_path / "absent")).setup()


def test_tensor_file_with_and_without_labels(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.default_rng(0).integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    save_file({"x": x, "y": np.arange(20) % 4}, str(tmp_path / "labelled.safetensors"))
    data = TensorGenerationData(str(tmp_path / "labelled.safetensors"), val_fraction=0.25, test_fraction=0.25)
    data.setup()
    assert data.num_classes == 4 and data.input_shape == (1, 4, 4)
    train = data.split("train")[0]
    assert train.shape[0] == 12 and train.min() >= -1 and train.max() <= 1
    np.savez(tmp_path / "plain.npz", images=(x / 255.0).astype(np.float32))
    data = TensorGenerationData(str(tmp_path / "plain.npz"), x_key="images")
    data.setup()
    assert data.num_classes == 0
    expected = torch.from_numpy(x / 255.0 * 2 - 1).float()  # [0, 1] floats -> [-1, 1]
    rows = torch.cat([data.split(s)[0] for s in ("train", "val", "test")])
    assert torch.allclose(rows.sort(dim=0).values, expected.sort(dim=0).values, atol=1e-6)


def test_tensor_file_refusals(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="has no array 'x'; it holds: images"):
        TensorGenerationData(str(tmp_path / "a.npz")).setup()
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 16), np.float32))
    with pytest.raises(ValueError, match=r"needs images x \[N, C, H, W\]; got shape \[4, 16\]"):
        TensorGenerationData(str(tmp_path / "flat.npz")).setup()
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 1, 2, 2), np.float32), y=np.zeros(3))
    with pytest.raises(ValueError, match=r"needs labels y \[N\]"):
        TensorGenerationData(str(tmp_path / "b.npz")).setup()


def test_points_csv_and_npy(tmp_path):
    points = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    (tmp_path / "p.csv").write_text("x,y\n" + "\n".join(f"{a},{b}" for a, b in points))
    np.save(tmp_path / "p.npy", points)
    for name in ("p.csv", "p.npy"):
        data = PointsData(str(tmp_path / name), val_fraction=0.2, test_fraction=0.2, split_seed=3)
        data.setup()
        assert data.input_shape == (2,) and data.num_classes == 0
        rows = torch.cat([data.split(s)[0] for s in ("train", "val", "test")])
        assert rows.shape == (50, 2) and torch.allclose(rows.sort(dim=0).values, torch.from_numpy(points).sort(dim=0).values, atol=1e-6)
    np.save(tmp_path / "bad.npy", np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"needs points \[N, 2\].*got shape \[5, 3\]"):
        PointsData(str(tmp_path / "bad.npy")).setup()
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(ValueError, match="non-numeric"):
        PointsData(str(tmp_path / "bad.csv")).setup()
