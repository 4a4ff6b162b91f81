"""Users' own data for the diffusion family: images from a folder or a tensor file, 2-D points
from a ``.csv`` / ``.npy`` file.

Images are scaled to [-1, 1] (DDPM's range, what the diffusion models here and diffusers' are
trained on), not standardised; points are kept as they are. Labels are optional: a flat image
folder, a tensor file without ``y`` and a points file are unconditional (``num_classes = 0``,
every label 0, as `anydistill.data.toy2d.Toy2DData`). A split without a file of its own is a
seeded held-out fraction of the training rows (`anydistill.data.arrays.held_out_split`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anydistill.core.recipe import PositiveInt
from anydistill.data.arrays import ArrayClassificationData, OpenFraction
from anydistill.data.image_folder import IMAGE_SUFFIXES, class_folders


class _GenerationArrays(ArrayClassificationData):
    """Shared by the three modules: no standardisation, no augmentation, and ``num_classes = 0``
    when the data have no labels (``_unlabelled`` is set while reading)."""

    _unlabelled = False

    def __init__(self, val_fraction, test_fraction, split_seed, batch_size, eval_batch_size, shuffle, train_limit, seed):
        super().__init__(val_fraction, test_fraction, split_seed, False, batch_size, eval_batch_size, shuffle, False,
                         train_limit, seed)

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        self.setup()
        return 0 if self._unlabelled else self._num_classes

    @property
    def name(self) -> str:
        return type(self).__name__


def _read_image(path: Path, mode: str, size: tuple[int, int], where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if mode == "grayscale" else "RGB").resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # [0, 255] -> [-1, 1]
    except OSError as error:
        raise ValueError(f"{where}: cannot read the image '{path}' ({error}); remove or replace it.") from None


def image_files(root: str, where: str) -> tuple[dict[str, list[Path]], bool]:
    """``({class: files}, unlabelled)``: class subfolders, or the images of a flat folder (one class).

    Raises:
        ValueError: no such folder, a folder without images, a class folder without images.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"{where}: no such folder '{root}'. Point it at a folder of images (one subfolder per class, or flat).")
    if any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        return class_folders(root, where), False
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{where}: '{root}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no class subfolders; "
                         "add images to it (flat: unconditional) or one subfolder of images per class.")
    return {"": files}, True


class ImageFolderGenerationData(_GenerationArrays):
    """Images for generation: one subfolder per class (class-conditional), or a flat folder of
    images (unconditional); resized to ``size`` and scaled to [-1, 1]: inputs [N, C, H, W].

    Args:
        train: the folder of training images; ``val`` and ``test`` folders are optional (when
            absent, that split is ``val_fraction`` / ``test_fraction`` of the training images,
            drawn per class with ``split_seed``). Every folder must be laid out like ``train``.
        size: the side of the square images, or [height, width].
        mode: ``grayscale`` (C = 1) or ``rgb`` (C = 3).
        The rest: see `anydistill.data.tensor_data.TensorClassificationData`.
    """

    def __init__(
        self,
        train: str,
        size: PositiveInt | list[PositiveInt] = 32,
        mode: Literal["grayscale", "rgb"] = "rgb",
        val: str | None = None,
        test: str | None = None,
        val_fraction: OpenFraction = 0.1,
        test_fraction: OpenFraction = 0.2,
        split_seed: int = 0,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1024,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__(val_fraction, test_fraction, split_seed, batch_size, eval_batch_size, shuffle, train_limit, seed)
        self.roots = {name: path for name, path in (("train", train), ("val", val), ("test", test)) if path is not None}
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mode = mode

    def describe(self) -> str:
        return f"image folders {self.roots}, {self.mode} resized to {list(self.size)}, pixels / 127.5 - 1"

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        if len(self.size) != 2:
            raise ValueError(f"data.size must be one side or [height, width]; got {list(self.size)}.")
        arrays, layouts = {}, {}
        for split, root in self.roots.items():
            files, layouts[split] = image_files(root, f"data.{split}")
            images = [_read_image(p, self.mode, self.size, f"data.{split}") for paths in files.values() for p in paths]
            labels = [label for label, paths in files.items() for _ in paths]
            x = torch.from_numpy(np.stack(images))
            x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]
            arrays[split] = (x, np.array(labels, dtype=object))
        if len(set(layouts.values())) > 1:
            raise ValueError(f"data: the folders {self.roots} mix class subfolders and flat folders; lay every split out like train.")
        self._unlabelled = layouts["train"]
        return arrays


def _stored_arrays(path: str, where: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if file.suffix not in (".safetensors", ".npz"):
        raise ValueError(f"{where}: '{path}' is neither .safetensors nor .npz; save x (and y) with safetensors.torch.save_file "
                         "or numpy.savez.")
    if not file.is_file():
        raise ValueError(f"{where}: no such file '{path}'.")
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        from safetensors.numpy import load_file

        return load_file(str(file))
    except Exception as error:  # noqa: BLE001 - a corrupt file raises many types
        raise ValueError(f"{where}: cannot read '{path}': {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


class TensorGenerationData(_GenerationArrays):
    """Images for generation saved as arrays: ``x`` [N, C, H, W], optional labels ``y`` [N]
    (class-conditional when present, unconditional when the file has no ``y_key``).

    Values are mapped to [-1, 1] from ``value_range`` (default: [0, 255] for uint8 arrays, [0, 1]
    for float arrays whose values lie in it, else taken as already in [-1, 1]).

    Args:
        train: the training file (.safetensors or .npz); ``val`` and ``test`` files are optional
            (when absent, that split is ``val_fraction`` / ``test_fraction`` of the training rows).
        x_key, y_key: the names of the images and labels in the files.
        value_range: ``[low, high]`` of the stored values, or None to infer it.
        The rest: see `anydistill.data.tensor_data.TensorClassificationData`.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        test: str | None = None,
        x_key: str = "x",
        y_key: str = "y",
        value_range: list[float] | None = None,
        val_fraction: OpenFraction = 0.1,
        test_fraction: OpenFraction = 0.2,
        split_seed: int = 0,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1024,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__(val_fraction, test_fraction, split_seed, batch_size, eval_batch_size, shuffle, train_limit, seed)
        self.files = {name: path for name, path in (("train", train), ("val", val), ("test", test)) if path is not None}
        self.keys, self.value_range = (x_key, y_key), value_range

    def describe(self) -> str:
        return f"tensors {self.files} keys {self.keys} from range {self.value_range or 'inferred'} to [-1, 1]"

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        x_key, y_key = self.keys
        if self.value_range is not None and not (len(self.value_range) == 2 and self.value_range[0] < self.value_range[1]):
            raise ValueError(f"data.value_range must be [low, high] with low < high; got {self.value_range}.")
        arrays, labelled = {}, {}
        for split, path in self.files.items():
            where = f"data.{split}"
            stored = _stored_arrays(path, where)
            if x_key not in stored:
                raise ValueError(f"{where}: '{path}' has no array '{x_key}'; it holds: {', '.join(stored) or 'nothing'}. "
                                 "Name the images with `x_key:`.")
            x = stored[x_key]
            if x.ndim != 4:
                raise ValueError(f"{where}: '{path}' needs images {x_key} [N, C, H, W]; got shape {list(x.shape)}. "
                                 "Add the channel axis (x[:, None] for grayscale) or move it first.")
            labelled[split] = y_key in stored
            y = stored[y_key] if labelled[split] else np.zeros(len(x), dtype=np.int64)
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(f"{where}: '{path}' needs labels {y_key} [N] beside {x_key} [N, ...]; got {list(y.shape)} "
                                 f"and {list(x.shape)}.")
            arrays[split] = (self._scaled(x), y)
        if len(set(labelled.values())) > 1:
            raise ValueError(f"data: only some of the files {self.files} hold labels '{y_key}'; give them in every file or none.")
        self._unlabelled = not labelled["train"]
        return arrays

    def _scaled(self, x: np.ndarray) -> torch.Tensor:
        if self.value_range is not None:
            low, high = self.value_range
        elif x.dtype == np.uint8:
            low, high = 0.0, 255.0
        elif x.size and x.min() >= 0 and x.max() <= 1:
            low, high = 0.0, 1.0
        else:
            low, high = -1.0, 1.0
        values = torch.from_numpy(np.ascontiguousarray(x)).float()
        return (values - low) / (high - low) * 2 - 1


class PointsData(_GenerationArrays):
    """2-D points for the toy2d-style recipes and evaluator, from a ``.npy`` array [N, 2] or a
    ``.csv`` file of two numeric columns (a header row is skipped); unconditional, unscaled.

    Args:
        train: the training file; ``val`` and ``test`` files are optional (when absent, that split
            is ``val_fraction`` / ``test_fraction`` of the training points, drawn with ``split_seed``).
        The rest: see `anydistill.data.tensor_data.TensorClassificationData`.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        test: str | None = None,
        val_fraction: OpenFraction = 0.1,
        test_fraction: OpenFraction = 0.2,
        split_seed: int = 0,
        batch_size: PositiveInt = 512,
        eval_batch_size: PositiveInt = 4096,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__(val_fraction, test_fraction, split_seed, batch_size, eval_batch_size, shuffle, train_limit, seed)
        self.files = {name: path for name, path in (("train", train), ("val", val), ("test", test)) if path is not None}
        self._unlabelled = True

    def describe(self) -> str:
        return f"points {self.files}"

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        arrays = {}
        for split, path in self.files.items():
            points = read_points(path, f"data.{split}")
            arrays[split] = (torch.from_numpy(points), np.zeros(len(points), dtype=np.int64))
        return arrays


def read_points(path: str, where: str) -> np.ndarray:
    """``[N, 2]`` float32 points from a .npy or .csv file (one line naming the fix otherwise)."""
    file = Path(path)
    if file.suffix not in (".npy", ".csv"):
        raise ValueError(f"{where}: '{path}' is neither .npy nor .csv; save the points with numpy.save or as two csv columns.")
    if not file.is_file():
        raise ValueError(f"{where}: no such file '{path}'.")
    try:
        if file.suffix == ".npy":
            points = np.load(file, allow_pickle=False)
        else:
            import pandas as pd

            frame = pd.read_csv(file, header=None)
            if frame.shape[0] and not all(_is_number(v) for v in frame.iloc[0]):  # a header row
                frame = frame.iloc[1:]
            points = frame.apply(pd.to_numeric, errors="coerce").to_numpy()
    except Exception as error:  # noqa: BLE001 - a corrupt file raises many types
        raise ValueError(f"{where}: cannot read '{path}': {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"{where}: '{path}' needs points [N, 2] (two columns x, y); got shape {list(points.shape)}.")
    points = points.astype(np.float32)
    if not np.isfinite(points).all():
        raise ValueError(f"{where}: '{path}' has missing or non-numeric values; every row needs two numbers.")
    return points


def _is_number(value: object) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
