"""Arrays a Python caller already holds (tensors, a ``Dataset``, a ``DataLoader``), served like a
user's files: the Python API binds them to a data-module class for the length of one call."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from anydistill.core.cache import tensor_fingerprint
from anydistill.data.arrays import ArrayClassificationData

ACCEPTED = ("tensors or arrays (X, y); a map-style Dataset or a DataLoader yielding (x, y) pairs or {'x', 'y'} dicts; "
            "a Hugging Face datasets.Dataset with a 'label' column; {'train': (X, y), 'val': ..., 'test': ...}; "
            "or a data-module name or {'name': ..., options} mapping (see docs/data.md)")


class InMemoryData(ArrayClassificationData):
    """Splits held in memory: ``arrays`` maps "train" (and optionally "val", "test") to (x [N, ...],
    labels [N]); a missing split is held out of the training rows like a user's files. Created
    per call by `bind`, never named in a recipe file. Options: `ArrayClassificationData`'s."""

    arrays: ClassVar[dict[str, tuple[Any, Any]]] = {}
    description: ClassVar[str] = "in-memory arrays"

    @classmethod
    def bind(cls, arrays: dict[str, tuple[Any, Any]], description: str) -> type[InMemoryData]:
        """A subclass serving ``arrays`` (validated: x [N, ...] and labels [N] per split)."""
        checked = {name: _check_split(name, *pair) for name, pair in arrays.items()}
        return type("InMemoryData", (cls,), {"arrays": checked, "description": description})

    def read_arrays(self) -> dict[str, tuple[Any, Any]]:
        return self.arrays

    def describe(self) -> str:
        return self.description

    @classmethod
    def fingerprint_of(cls) -> str:
        """A fingerprint of the bound training inputs (what config.yaml records)."""
        return tensor_fingerprint(torch.as_tensor(np.asarray(cls.arrays["train"][0])), cls.description, "")


def _check_split(name: str, x: Any, y: Any) -> tuple[torch.Tensor, np.ndarray]:
    """(x as a tensor, uint8 images scaled to [0, 1]; labels as a 1-d array)."""
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if x.dim() < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"data: the {name} split needs x [N, ...] and y [N]; got x {list(x.shape)} and y {list(y.shape)}.")
    return (x.float() / 255.0 if x.dtype == torch.uint8 else x), y


def arrays_from(value: Any) -> dict[str, tuple[Any, Any]]:
    """``{"train": (x, y), ...}`` from what a Python caller passes as ``data`` (see `ACCEPTED`).

    Raises:
        ValueError: one line saying what it got and what is accepted.
    """
    if isinstance(value, dict):
        return {name: _pair(name, split) for name, split in value.items()}
    return {"train": _pair("train", value)}


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, Dataset

    if isinstance(value, tuple | list) and len(value) == 2 and all(hasattr(v, "__len__") for v in value) and not _is_item(value):
        return value[0], value[1]
    if hasattr(value, "column_names") and hasattr(value, "with_format"):  # a Hugging Face datasets.Dataset
        from anydistill.data.arrays import column_arrays

        return column_arrays(value, None, "label", f"data ({name} split, a datasets.Dataset)")
    if isinstance(value, DataLoader):
        return _stack([_as_pair(batch, "the DataLoader's batches") for batch in value], batched=True)
    if isinstance(value, Dataset) or (hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(value, str | bytes)):
        return _stack([_as_pair(value[i], "the Dataset's items") for i in range(len(value))], batched=False)
    raise ValueError(f"data: got {type(value).__name__}; the Python API accepts {ACCEPTED}.")


def _is_item(value: Any) -> bool:
    """An (x, label) pair of one row rather than (X, y) arrays: its second entry is a scalar."""
    second = value[1]
    return np.ndim(second.detach().cpu() if isinstance(second, torch.Tensor) else second) == 0


def _as_pair(item: Any, where: str) -> tuple[Any, Any]:
    if isinstance(item, dict) and {"x", "y"} <= set(item):
        return item["x"], item["y"]
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    got = f"dicts with keys {sorted(item)}" if isinstance(item, dict) else type(item).__name__
    raise ValueError(f"data: {where} are {got}; the classifier and dataset families take (x, y) pairs or {{'x', 'y'}} dicts.")


def _stack(pairs: list[tuple[Any, Any]], batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not pairs:
        raise ValueError("data: the Dataset or DataLoader is empty; give at least one row per class.")
    join = torch.cat if batched else torch.stack
    return join([torch.as_tensor(x) for x, _ in pairs]), join([torch.as_tensor(y) for _, y in pairs])
