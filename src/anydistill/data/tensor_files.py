"""Users' arrays: a ``.safetensors`` or ``.npz`` file per split holding inputs ``x`` and labels ``y``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anydistill.core.recipe import PositiveInt
from anydistill.data.arrays import ArrayClassificationData, OpenFraction

SUFFIXES = (".safetensors", ".npz")


def read_tensor_file(path: str, keys: tuple[str, str], where: str) -> tuple[torch.Tensor, np.ndarray]:
    """``(x [N, ...], y [N])`` stored under ``keys`` in a .safetensors or .npz file.

    Raises:
        ValueError: a missing file or key (lists the keys found), an unknown suffix, mismatched lengths.
    """
    file = Path(path)
    if file.suffix not in SUFFIXES:
        raise ValueError(f"{where}: '{path}' is neither .safetensors nor .npz; save x and y with safetensors.torch.save_file "
                         "or numpy.savez.")
    if not file.is_file():
        raise ValueError(f"{where}: no such file '{path}'.")
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                stored = {name: archive[name] for name in archive.files}
        else:
            from safetensors.numpy import load_file

            stored = load_file(str(file))
    except Exception as error:  # noqa: BLE001 - a corrupt file raises many types
        raise ValueError(f"{where}: cannot read '{path}': {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    absent = [key for key in keys if key not in stored]
    if absent:
        raise ValueError(f"{where}: '{path}' has no array {', '.join(repr(a) for a in absent)}; it holds: {', '.join(sorted(stored)) or 'nothing'}. "
                         "Name them with `x_key:` and `y_key:`.")
    x, y = stored[keys[0]], stored[keys[1]]
    if y.ndim != 1 or x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"{where}: '{path}' needs x [N, ...] and y [N]; got x {list(x.shape)} and y {list(y.shape)}.")
    return torch.from_numpy(np.ascontiguousarray(x)), y


def as_float_inputs(x: torch.Tensor, y: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Float32 inputs: 8-bit images (uint8) scaled to [0, 1], other integers cast (a tensor file
    holds features or pixels; integer inputs would be read as token ids downstream)."""
    if x.is_floating_point():
        return x, y
    return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()), y


class TensorFileData(ArrayClassificationData):
    """Inputs and labels saved as arrays: x [N, F] (tabular) or [N, C, H, W] (images), y [N];
    uint8 images are scaled to [0, 1] and other integer inputs cast to float32.

    Args:
        train: the training file (.safetensors or .npz); ``val`` and ``test`` files are optional
            (when absent, that split is ``val_fraction`` / ``test_fraction`` of the training rows).
        x_key, y_key: the names of the inputs and labels in the files.
        standardize: per feature for [N, F], per channel for [N, C, ...], fitted on the training
            rows; turn it off for inputs already normalised.
        The rest: see `ArrayClassificationData`.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        test: str | None = None,
        x_key: str = "x",
        y_key: str = "y",
        val_fraction: OpenFraction = 0.1,
        test_fraction: OpenFraction = 0.2,
        split_seed: int = 0,
        standardize: bool = True,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1024,
        shuffle: bool = True,
        augment: bool = False,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
        labelled_count: PositiveInt | None = None,
        labelled_seed: int = 0,
    ):
        super().__init__(val_fraction, test_fraction, split_seed, standardize, batch_size, eval_batch_size, shuffle, augment,
                         train_limit, seed, labelled_count=labelled_count, labelled_seed=labelled_seed)
        self.files = {name: path for name, path in (("train", train), ("val", val), ("test", test)) if path is not None}
        self.keys = (x_key, y_key)

    def describe(self) -> str:
        return f"tensors {self.files} keys {self.keys}"

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        arrays = {name: as_float_inputs(*read_tensor_file(path, self.keys, f"data.{name}")) for name, path in self.files.items()}
        shapes = {name: list(x.shape[1:]) for name, (x, _) in arrays.items()}
        if len({str(s) for s in shapes.values()}) > 1:
            raise ValueError(f"the files' inputs have different shapes per row ({shapes}); give the same shape in every split.")
        if self.augment and len(shapes["train"]) != 3:
            raise ValueError(f"data.augment shifts images [N, C, H, W]; these inputs are rows of shape {shapes['train']}. "
                             "Set augment: false.")
        return arrays
