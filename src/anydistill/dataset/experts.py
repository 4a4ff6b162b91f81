"""Expert-trajectory buffer of the MTT family (Cazenavette et al. 2022, ``buffer.py``).

K experts are trained on the real data and their flat parameters (`convnet.flat_parameters`) are
snapshotted at initialisation and after every epoch. Trajectory matching then starts a student at
expert epoch t and compares it with the expert at epoch t + M.

Layout of one buffer directory::

    <directory>/
        manifest.json              model spec, dataset fingerprint, num_params, experts, epochs, checksums
        expert-00000.safetensors   "trajectory": fp32 [E+1, P], row e = parameters after epoch e (row 0 = init)
        ...

Each shard is written atomically (temporary file, then rename), and the manifest is written last,
by `ExpertWriter.close`: a directory without a manifest is an interrupted write and is refused.
Reading is lazy: `ExpertBuffer.segment` slices two rows out of one shard with ``safe_open``, so a
buffer of 100 experts x 50 epochs never has to fit in memory; each shard's SHA-256 is checked once,
the first time it is opened.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from anydistill import __version__
from anydistill.core.cache import file_sha256
from anydistill.core.errors import AnydistillError
from anydistill.core.rundir import write_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_NAME = "trajectory"


class ExpertBufferError(AnydistillError):
    """An expert buffer is missing, incomplete, corrupt, or built for another model or dataset."""


def shard_name(expert: int) -> str:
    """File name of expert ``expert``'s shard."""
    return f"expert-{expert:05d}.safetensors"


def _json_normalised(spec: dict[str, Any], what: str) -> dict[str, Any]:
    """``spec`` as it reads back from JSON (tuples become lists), so comparisons are like for like."""
    if not isinstance(spec, dict):
        raise ValueError(f"The '{what}' of an expert buffer must be a dict. Got {type(spec).__name__}.")
    try:
        return json.loads(json.dumps(spec, sort_keys=True))
    except (TypeError, ValueError) as error:
        raise ValueError(f"The '{what}' of an expert buffer must be JSON-serialisable (str, number, list, dict): {error}.") from None


class ExpertWriter:
    """Writes an expert buffer, one expert (one shard) at a time.

    Args:
        directory: the buffer directory; created if absent. One that already holds a manifest is
            never overwritten.
        model_spec: JSON-serialisable description of the expert architecture (e.g. the `convnet`
            arguments); readers compare it with the model they will unflatten into.
        dataset_fingerprint: fingerprint of the real data (and transform: ZCA, normalisation) the
            experts were trained on.
        num_params: P, the length of every flat snapshot.

    Use as a context manager, or call `close` after the last `add_expert`; if an exception leaves
    the ``with`` block, no manifest is written and the partial buffer cannot be opened.
    """

    def __init__(self, directory: Path, *, model_spec: dict[str, Any], dataset_fingerprint: str, num_params: int):
        self.directory = Path(directory)
        self.model_spec = _json_normalised(model_spec, "model_spec")
        if not isinstance(dataset_fingerprint, str) or not dataset_fingerprint:
            raise ValueError(f"The 'dataset_fingerprint' of an expert buffer must be a non-empty string. Got {dataset_fingerprint!r}.")
        if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 1:
            raise ValueError(f"The 'num_params' of an expert buffer must be an int >= 1. Got {num_params!r}.")
        self.dataset_fingerprint = dataset_fingerprint
        self.num_params = num_params
        self._num_epochs: int | None = None
        self._shards: list[dict[str, str]] = []
        self._closed = False
        if (self.directory / MANIFEST).exists():
            raise ExpertBufferError(
                f"{self.directory} already holds a finished expert buffer and is never overwritten: "
                f"delete it or write the new buffer to another directory."
            )
        self.directory.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ExpertWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    @property
    def num_experts(self) -> int:
        return len(self._shards)

    def add_expert(self, snapshots: Sequence[Tensor]) -> Path:
        """Store one expert's trajectory as its own shard.

        Args:
            snapshots: E + 1 flat parameter vectors [P]: epoch 0 (initialisation) ... epoch E.
                Every expert of a buffer must have the same E. Stored as fp32.

        Returns:
            The path of the shard written.
        """
        if self._closed:
            raise ExpertBufferError(f"The expert buffer {self.directory} is already closed: open a new ExpertWriter on another directory.")
        snapshots = list(snapshots)
        if len(snapshots) < 2:
            raise ValueError(f"An expert needs at least 2 snapshots (initialisation and epoch 1). Got {len(snapshots)}.")
        for epoch, snapshot in enumerate(snapshots):
            if not isinstance(snapshot, Tensor) or snapshot.dim() != 1 or snapshot.numel() != self.num_params:
                got = tuple(snapshot.shape) if isinstance(snapshot, Tensor) else type(snapshot).__name__
                raise ValueError(f"Snapshot {epoch} of an expert must be a 1-D tensor of {self.num_params} values. Got {got}.")
        num_epochs = len(snapshots) - 1
        if self._num_epochs is not None and num_epochs != self._num_epochs:
            raise ValueError(
                f"Every expert of a buffer must have the same number of epochs: the first has {self._num_epochs} "
                f"({self._num_epochs + 1} snapshots). Got {num_epochs} ({len(snapshots)} snapshots)."
            )
        trajectory = torch.stack([s.detach().to("cpu", torch.float32) for s in snapshots]).contiguous()
        path = self.directory / shard_name(len(self._shards))
        # Temporary file in the same directory, then a rename: a crash never leaves a half shard.
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=self.directory)
        os.close(handle)
        try:
            save_file({TENSOR_NAME: trajectory}, temporary)
            checksum = file_sha256(Path(temporary))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._num_epochs = num_epochs
        self._shards.append({"file": path.name, "sha256": checksum})
        return path

    def close(self) -> Path:
        """Write ``manifest.json`` (last, atomically), which makes the buffer readable.

        Returns:
            The buffer directory.
        """
        if self._closed:
            return self.directory
        if not self._shards:
            raise ExpertBufferError(f"The expert buffer {self.directory} has no experts: call add_expert at least once before close.")
        manifest = {
            "format": FORMAT_VERSION,
            "anydistill": __version__,
            "model_spec": self.model_spec,
            "dataset_fingerprint": self.dataset_fingerprint,
            "num_params": self.num_params,
            "num_experts": len(self._shards),
            "num_epochs": self._num_epochs,
            "dtype": "float32",
            "shards": self._shards,
        }
        write_atomic(self.directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        self._closed = True
        return self.directory


class ExpertBuffer:
    """A finished expert buffer, read lazily.

    Args:
        directory: a directory written by `ExpertWriter`.
        expected_model_spec: if given, the buffer must have been built for this model spec.
        expected_dataset_fingerprint: if given, the buffer must have been built on this data.

    Raises:
        ExpertBufferError: no manifest (interrupted write or not a buffer), a corrupt manifest, or
            a model spec / dataset mismatch. The message names the fix.

    Attributes:
        num_epochs: E, the number of training epochs per expert (each shard holds E + 1 snapshots).
        num_params: P.
        model_spec, dataset_fingerprint: as written.
    """

    def __init__(
        self,
        directory: Path,
        *,
        expected_model_spec: dict[str, Any] | None = None,
        expected_dataset_fingerprint: str | None = None,
    ):
        self.directory = Path(directory)
        fix = f"delete {self.directory} and train the experts again"
        try:
            manifest = json.loads((self.directory / MANIFEST).read_text())
            self.model_spec: dict[str, Any] = manifest["model_spec"]
            self.dataset_fingerprint: str = manifest["dataset_fingerprint"]
            self.num_params = int(manifest["num_params"])
            self.num_epochs = int(manifest["num_epochs"])
            self._shards = [(str(s["file"]), str(s["sha256"])) for s in manifest["shards"]]
            if manifest.get("format") != FORMAT_VERSION or len(self._shards) != int(manifest["num_experts"]):
                raise ValueError("inconsistent manifest")
        except FileNotFoundError:
            raise ExpertBufferError(
                f"The expert buffer {self.directory} has no {MANIFEST} (an interrupted write, or not an expert buffer): {fix}."
            ) from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ExpertBufferError(f"The manifest of the expert buffer {self.directory} is corrupt: {fix}.") from None
        if expected_model_spec is not None:
            wanted = _json_normalised(expected_model_spec, "expected_model_spec")
            if wanted != self.model_spec:
                raise ExpertBufferError(
                    f"The expert buffer {self.directory} was built for another model ({json.dumps(self.model_spec, sort_keys=True)} "
                    f"!= {json.dumps(wanted, sort_keys=True)}): point to the buffer of this model, or {fix}."
                )
        if expected_dataset_fingerprint is not None and expected_dataset_fingerprint != self.dataset_fingerprint:
            raise ExpertBufferError(
                f"The expert buffer {self.directory} was built on another dataset ({self.dataset_fingerprint[:16]} != "
                f"{expected_dataset_fingerprint[:16]}): point to the buffer of this dataset, or {fix}."
            )
        self._verified: set[int] = set()

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        expected_model_spec: dict[str, Any] | None = None,
        expected_dataset_fingerprint: str | None = None,
    ) -> ExpertBuffer:
        """Open and validate the buffer at ``directory`` (see the class docstring)."""
        return cls(directory, expected_model_spec=expected_model_spec, expected_dataset_fingerprint=expected_dataset_fingerprint)

    def __len__(self) -> int:
        return len(self._shards)

    def __repr__(self) -> str:
        return f"ExpertBuffer({str(self.directory)!r}, experts={len(self)}, epochs={self.num_epochs}, params={self.num_params})"

    def _verified_shard(self, expert: int) -> Path:
        name, checksum = self._shards[expert]
        file = self.directory / name
        if expert not in self._verified:
            if not file.is_file() or file_sha256(file) != checksum:
                raise ExpertBufferError(
                    f"Shard {name} of the expert buffer {self.directory} is missing or corrupt (checksum mismatch): "
                    f"delete {self.directory} and train the experts again."
                )
            self._verified.add(expert)
        return file

    def segment(self, expert: int, start_epoch: int, num_epochs: int) -> tuple[Tensor, Tensor]:
        """The expert's parameters at ``start_epoch`` and at ``start_epoch + num_epochs``.

        Only these two rows are read from the expert's shard.

        Returns:
            (start [P], end [P]), fp32: MTT's θ*_t and θ*_{t+M}.
        """
        if isinstance(expert, bool) or not isinstance(expert, int) or not 0 <= expert < len(self):
            raise ValueError(f"The expert index must be an int in [0, {len(self)}). Got {expert!r}.")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"The 'start_epoch' of a segment must be an int >= 0. Got {start_epoch!r}.")
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"The 'num_epochs' of a segment must be an int >= 1. Got {num_epochs!r}.")
        end_epoch = start_epoch + num_epochs
        if end_epoch > self.num_epochs:
            raise ValueError(
                f"A segment from epoch {start_epoch} over {num_epochs} epochs ends at epoch {end_epoch}, but the experts "
                f"of {self.directory} stop at epoch {self.num_epochs}: use start_epoch + num_epochs <= {self.num_epochs}."
            )
        file = self._verified_shard(expert)
        try:
            with safe_open(str(file), framework="pt") as handle:
                rows = handle.get_slice(TENSOR_NAME)
                shape = tuple(rows.get_shape())
                if shape != (self.num_epochs + 1, self.num_params):
                    raise ValueError(f"shape {shape}")
                # Slicing the safetensors view reads just these rows from disk.
                start = rows[start_epoch : start_epoch + 1][0]
                end = rows[end_epoch : end_epoch + 1][0]
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            raise ExpertBufferError(
                f"Shard {file.name} of the expert buffer {self.directory} cannot be read ({error}): "
                f"delete {self.directory} and train the experts again."
            ) from None
        return start.float(), end.float()

    def sample_segment(
        self, generator: torch.Generator, max_start_epoch: int, expert_epochs: int
    ) -> tuple[int, int, Tensor, Tensor]:
        """Sample a segment as MTT does: a uniform expert, a uniform start epoch in [0, max_start_epoch).

        Args:
            generator: the source of randomness (same generator state -> same segment).
            max_start_epoch: T⁺; start epochs are drawn from [0, T⁺).
            expert_epochs: M, the target is the expert at start + M.

        Returns:
            (expert index, start epoch, start [P], end [P]).

        Raises:
            ValueError: the largest possible target epoch (T⁺ - 1 + M) is past the stored epochs E,
                i.e. max_start_epoch + expert_epochs > E + 1 (the number of stored snapshots).
        """
        if isinstance(max_start_epoch, bool) or not isinstance(max_start_epoch, int) or max_start_epoch < 1:
            raise ValueError(f"The 'max_start_epoch' of MTT must be an int >= 1. Got {max_start_epoch!r}.")
        if isinstance(expert_epochs, bool) or not isinstance(expert_epochs, int) or expert_epochs < 1:
            raise ValueError(f"The 'expert_epochs' of MTT must be an int >= 1. Got {expert_epochs!r}.")
        if max_start_epoch + expert_epochs > self.num_epochs + 1:
            raise ValueError(
                f"max_start_epoch + expert_epochs must be <= {self.num_epochs + 1} (the {self.num_epochs + 1} snapshots, epochs "
                f"0..{self.num_epochs}, stored in {self.directory}). Got {max_start_epoch} + {expert_epochs}: lower them, "
                f"or train experts for at least {max_start_epoch + expert_epochs - 1} epochs."
            )
        expert = int(torch.randint(len(self), (1,), generator=generator).item())
        start_epoch = int(torch.randint(max_start_epoch, (1,), generator=generator).item())
        start, end = self.segment(expert, start_epoch, expert_epochs)
        return expert, start_epoch, start, end
