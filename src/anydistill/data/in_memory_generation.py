"""Samples a Python caller already holds, served to the diffusion family like a user's files:
2-D points ``[N, 2]`` as `PointsData` serves a ``.npy`` file, images ``[N, C, H, W]`` as
`TensorGenerationData` serves a ``.safetensors`` file (scaled to [-1, 1] the same way), each
optionally with labels (class-conditional). `bind_generation_data` is the family's binder for
`anydistill.distill` (``api.inputs.IN_MEMORY_DATA``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from anydistill.core.cache import tensor_fingerprint
from anydistill.core.recipe import PositiveInt
from anydistill.data.arrays import OpenFraction
from anydistill.data.generation_files import PointsData, TensorGenerationData

ACCEPTED = ("2-D points [N, 2] or images [N, C, H, W] as a tensor or array, optionally with labels as (X, y [N]); "
            "{'train': ..., 'val': ..., 'test': ...} of those; or a data-module name or {'name': ..., options} mapping "
            "(e.g. {'name': 'points', 'train': 'points.npy'})")


class InMemoryPointsData(PointsData):
    """`PointsData` over points held in memory: ``arrays`` maps "train" (and optionally "val",
    "test") to (points [N, 2] float32, labels [N]); unconditional unless ``labelled``. Created per
    call by `bind`, never named in a recipe file.

    Args: `PointsData`'s, without ``train``, ``val`` and ``test``.
    """

    arrays: ClassVar[dict[str, tuple[torch.Tensor, np.ndarray]]] = {}
    labelled: ClassVar[bool] = False
    description: ClassVar[str] = "points in memory"

    def __init__(
        self,
        val_fraction: OpenFraction = 0.1,
        test_fraction: OpenFraction = 0.2,
        split_seed: int = 0,
        batch_size: PositiveInt = 512,
        eval_batch_size: PositiveInt = 4096,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__("memory", val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, shuffle=shuffle, train_limit=train_limit, seed=seed)
        self._unlabelled = not self.labelled

    def describe(self) -> str:
        return self.description

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        return dict(self.arrays)


class InMemoryImageData(TensorGenerationData):
    """`TensorGenerationData` over images held in memory: ``arrays`` maps "train" (and optionally
    "val", "test") to (images [N, C, H, W] as numpy, labels [N]), mapped to [-1, 1] from
    ``value_range`` as a tensor file's; unconditional unless ``labelled``. Created per call by
    `bind`, never named in a recipe file.

    Args: `TensorGenerationData`'s, without ``train``, ``val``, ``test``, ``x_key`` and ``y_key``.
    """

    arrays: ClassVar[dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    labelled: ClassVar[bool] = False
    description: ClassVar[str] = "images in memory"

    def __init__(
        self,
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
        super().__init__("memory", value_range=value_range, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, shuffle=shuffle, train_limit=train_limit, seed=seed)

    def describe(self) -> str:
        return f"{self.description} from range {self.value_range or 'inferred'} to [-1, 1]"

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        if self.value_range is not None and not (len(self.value_range) == 2 and self.value_range[0] < self.value_range[1]):
            raise ValueError(f"data.value_range must be [low, high] with low < high; got {self.value_range}.")
        self._unlabelled = not self.labelled
        return {split: (self._scaled(x), y) for split, (x, y) in self.arrays.items()}


def bind(kind: type, arrays: dict[str, tuple[Any, np.ndarray]], labelled: bool, description: str) -> type:
    """A subclass of ``kind`` (`InMemoryPointsData` or `InMemoryImageData`) serving ``arrays``."""
    return type(kind.__name__, (kind,), {"arrays": arrays, "labelled": labelled, "description": description})


def bind_generation_data(value: Any) -> tuple[type, dict[str, Any], dict[str, Any]]:
    """The diffusion family's binder (`anydistill.api.inputs.IN_MEMORY_DATA`): ``value`` (see
    `ACCEPTED`) as ``(data-module class, what config.yaml records, the data section's other options)``.

    Raises:
        ValueError: one line saying what was given and what is accepted.
    """
    splits = value if isinstance(value, dict) else {"train": value}
    unknown = sorted(set(splits) - {"train", "val", "test"})
    if unknown or "train" not in splits:
        raise ValueError(f"data: the splits are named 'train' (needed), 'val' and 'test'; got {', '.join(map(str, splits))}.")
    read = {name: _split(name, rows) for name, rows in splits.items()}
    kinds = {name: "points" if x.ndim == 2 else "images" for name, (x, _, _) in read.items()}
    shapes = {tuple(x.shape[1:]) for x, _, _ in read.values()}
    if len(shapes) > 1:
        raise ValueError(f"data: the splits hold samples of different shapes ({', '.join(f'{n} {list(x.shape)}' for n, (x, _, _) in read.items())}); "
                         "give every split the same sample shape.")
    labelled = {name: has_labels for name, (_, _, has_labels) in read.items()}
    if len(set(labelled.values())) > 1:
        raise ValueError(f"data: only some splits have labels ({', '.join(n for n, v in labelled.items() if v)}); give (X, y) for every split or X alone.")
    points = kinds["train"] == "points"
    arrays = {name: ((torch.from_numpy(x.astype(np.float32)) if points else x), y) for name, (x, y, _) in read.items()}
    rows = ", ".join(f"{name} {len(x)} {kinds[name]}" for name, (x, _, _) in read.items())
    description = f"in-memory {'points' if points else 'images'} {list(read['train'][0].shape[1:])} ({rows}{', labelled' if labelled['train'] else ''})"
    target = bind(InMemoryPointsData if points else InMemoryImageData, arrays, labelled["train"], description)
    train = read["train"][0]
    record = {"class": f"{type(value).__module__}.{type(value).__qualname__}", "rows": rows, "labelled": labelled["train"],
              "fingerprint": tensor_fingerprint(torch.from_numpy(np.ascontiguousarray(train)), description, "")}
    return target, record, {}


def _split(name: str, rows: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(x [N, 2] or [N, C, H, W] as numpy, labels [N], labelled)`` of one split."""
    labelled = isinstance(rows, tuple | list) and len(rows) == 2 and all(_is_array(r) for r in rows)
    x, y = rows if labelled else (rows, None)
    if not _is_array(x):
        raise ValueError(f"data: got {type(rows).__name__}; the diffusion methods accept {ACCEPTED}.")
    x = _numpy(x)
    if not (x.ndim == 2 and x.shape[1] == 2) and x.ndim != 4:
        hint = " Add the channel axis (x[:, None] for grayscale)." if x.ndim == 3 else ""
        raise ValueError(f"data: the {name} samples have shape {list(x.shape)}; the diffusion methods take 2-D points [N, 2] or images "
                         f"[N, C, H, W].{hint}")
    if len(x) == 0:
        raise ValueError(f"data: the {name} split has no samples; give at least one.")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x.astype(np.float64)).all():
        raise ValueError(f"data: the {name} samples have missing or non-numeric values; give finite numbers.")
    if not labelled:
        return x, np.zeros(len(x), dtype=np.int64), False
    y = _numpy(y)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"data: the {name} split needs labels y [N] beside X [N, ...]; got y {list(y.shape)} and X {list(x.shape)}.")
    return x, y, True


def _is_array(value: Any) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
