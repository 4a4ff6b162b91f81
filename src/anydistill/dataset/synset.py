r"""The synthetic set: the trainable object of dataset distillation.

A ``SyntheticSet`` holds ``num_classes * ipc`` images, grouped by class in class order (rows
``c * ipc`` to ``(c + 1) * ipc`` are class ``c``; see `SyntheticSet.class_slice`), their labels and,
for MTT-style methods, a learnable step size.

Parameters and buffers
----------------------
* ``images`` — parameter ``[N, C, H, W]``, ``N = num_classes * ipc``, float32, in the normalised
  input space of the real data (the space the networks see).
* ``label_logits`` — parameter ``[N, num_classes]`` if ``learn_labels``; initialised to
  ``LABEL_INIT_SCALE * one_hot`` so that the soft targets ``softmax(label_logits)`` start as
  (almost) the hard labels: the true class gets ``e^s / (e^s + K - 1)`` with ``s = 10``, i.e.
  0.99959 for K = 10 classes and 0.9955 for K = 100. Otherwise ``hard_labels`` — buffer ``[N]``
  int64, ``[0]*ipc + [1]*ipc + ...``.
* ``log_lr`` — the log of the inner-loop learning rate α (MTT, FTD, DATM learn it): a 0-d
  parameter if ``learn_lr``, else a 0-d buffer. It is stored in log space so that gradient steps
  can never make it negative; `SyntheticSet.lr` is ``exp(log_lr)``, differentiable.

The tensors are created (zeros) by the constructor because an optimizer must see them at once;
their values come from `SyntheticSet.init_from_noise` or `SyntheticSet.init_from_real`.

On disk
-------
``SyntheticSet.save(directory, ...)`` writes three files, each through a temporary file in the same
directory and ``os.replace`` (other files in ``directory`` are never touched)::

    synset.safetensors   images, labels or label_logits, log_lr
    manifest.json        hyperparameters, source dataset fingerprint, method, normalisation,
                         SHA-256 of synset.safetensors, anydistill version
    grid.png             a class-by-ipc image grid (at most 10 images per class), de-normalised

``manifest.json`` is replaced last: an interrupted save leaves either the old set complete or a
checksum mismatch, which `SyntheticSet.load` refuses.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from anydistill import __version__
from anydistill.core.checks import is_int
from anydistill.core.errors import AnydistillError

__all__ = ["SyntheticSet", "SynsetError", "synthetic_set", "LABEL_INIT_SCALE", "GRID_MAX_PER_CLASS"]

FORMAT_VERSION = 1
LABEL_INIT_SCALE = 10.0
GRID_MAX_PER_CLASS = 10
TENSORS_FILE = "synset.safetensors"
MANIFEST_FILE = "manifest.json"
GRID_FILE = "grid.png"


class SynsetError(AnydistillError):
    """A saved synthetic set is missing, corrupt, or does not match its manifest."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SyntheticSet(nn.Module):
    """``num_classes * ipc`` learnable images with their labels and an optional learnable lr.

    Args:
        num_classes: number of classes K (>= 1).
        ipc: images per class (>= 1).
        image_shape: ``(C, H, W)`` of one image.
        learn_labels: learn soft labels (``label_logits`` parameter) instead of fixed hard labels.
        learn_lr: learn the inner-loop step size α (``log_lr`` parameter), as MTT does.
        initial_lr: the starting α (> 0); also the fixed α when ``learn_lr`` is False.

    Raises:
        ValueError: one line per invalid argument, all at once.
    """

    def __init__(
        self,
        num_classes: int,
        ipc: int,
        image_shape: Sequence[int],
        *,
        learn_labels: bool = False,
        learn_lr: bool = False,
        initial_lr: float = 0.01,
    ):
        super().__init__()
        problems = []
        if not is_int(num_classes) or num_classes < 1:
            problems.append(f"The 'num_classes' parameter of SyntheticSet must be an int >= 1. Got {num_classes!r}.")
        if not is_int(ipc) or ipc < 1:
            problems.append(f"The 'ipc' parameter of SyntheticSet must be an int >= 1. Got {ipc!r}.")
        shape = tuple(image_shape) if isinstance(image_shape, Sequence) and not isinstance(image_shape, str) else None
        if shape is None or len(shape) != 3 or not all(is_int(d) and d >= 1 for d in shape):
            problems.append(f"The 'image_shape' parameter of SyntheticSet must be (C, H, W), three ints >= 1. Got {image_shape!r}.")
        if not isinstance(initial_lr, (int, float)) or isinstance(initial_lr, bool) or not (math.isfinite(initial_lr) and initial_lr > 0):
            problems.append(f"The 'initial_lr' parameter of SyntheticSet must be a float > 0. Got {initial_lr!r}.")
        if problems:
            raise ValueError("\n".join(problems))
        self.num_classes = int(num_classes)
        self.ipc = int(ipc)
        self.image_shape: tuple[int, int, int] = tuple(int(d) for d in shape)  # type: ignore[assignment]
        self.learn_labels = bool(learn_labels)
        self.learn_lr = bool(learn_lr)
        self.initial_lr = float(initial_lr)

        n = self.num_classes * self.ipc
        self.images = nn.Parameter(torch.zeros(n, *self.image_shape))
        classes = torch.arange(self.num_classes).repeat_interleave(self.ipc)
        if self.learn_labels:
            one_hot = nn.functional.one_hot(classes, self.num_classes).float()
            self.label_logits = nn.Parameter(LABEL_INIT_SCALE * one_hot)
        else:
            self.register_buffer("hard_labels", classes)
        log_lr = torch.tensor(math.log(self.initial_lr), dtype=torch.float32)
        if self.learn_lr:
            self.log_lr = nn.Parameter(log_lr)
        else:
            self.register_buffer("log_lr", log_lr)

    # ------------------------------------------------------------------ basic views

    @property
    def num_images(self) -> int:
        return self.num_classes * self.ipc

    @property
    def lr(self) -> Tensor:
        """The inner-loop step size α = exp(log_lr), a 0-d tensor (differentiable if ``learn_lr``)."""
        return self.log_lr.exp()

    def labels(self) -> Tensor:
        """Hard labels ``[N]`` int64, or soft targets ``softmax(label_logits)`` ``[N, K]`` if ``learn_labels``."""
        if self.learn_labels:
            return self.label_logits.softmax(dim=1)
        return self.hard_labels

    def class_slice(self, c: int) -> slice:
        """The rows of class ``c``: ``images[class_slice(c)]`` is ``[ipc, C, H, W]``."""
        if not is_int(c) or not 0 <= c < self.num_classes:
            raise IndexError(f"class_slice needs a class index in [0, {self.num_classes}). Got {c!r}.")
        return slice(c * self.ipc, (c + 1) * self.ipc)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, ipc={self.ipc}, image_shape={self.image_shape}, "
            f"learn_labels={self.learn_labels}, learn_lr={self.learn_lr}, initial_lr={self.initial_lr}"
        )

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def init_from_noise(self, generator: torch.Generator | None = None) -> SyntheticSet:
        """Fill ``images`` with standard Gaussian noise (DC's noise init, in the normalised space).

        Returns:
            ``self``.
        """
        noise = torch.randn(self.images.shape, generator=generator, dtype=self.images.dtype)
        self.images.copy_(noise)
        return self

    @torch.no_grad()
    def init_from_real(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Fill class ``c``'s block with ``ipc`` real images of class ``c``, drawn without replacement.

        Args:
            x: real images ``[M, C, H, W]`` (normalised like the networks' inputs).
            y: integer labels ``[M]`` in ``[0, num_classes)``.
            generator: makes the draw reproducible.

        Returns:
            the chosen indices into ``x``, ``[N]`` int64, grouped by class like ``images``.

        Raises:
            ValueError: shapes do not match, or some class has fewer than ``ipc`` examples (all listed).
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"init_from_real needs x of shape [M, {', '.join(map(str, self.image_shape))}]. Got {list(x.shape)}.")
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"init_from_real needs integer labels y of shape [{x.shape[0]}]. Got {y.dtype} {list(y.shape)}.")
        y = y.cpu()
        counts = torch.bincount(y[(y >= 0) & (y < self.num_classes)], minlength=self.num_classes)
        short = [f"class {c} has {int(counts[c])}" for c in range(self.num_classes) if counts[c] < self.ipc]
        if short:
            raise ValueError(
                f"init_from_real needs at least ipc={self.ipc} real images per class, but {'; '.join(short)}: "
                f"lower ipc or pass more real data."
            )
        picks = []
        for c in range(self.num_classes):
            members = (y == c).nonzero().squeeze(1)
            order = torch.randperm(members.numel(), generator=generator)[: self.ipc]
            picks.append(members[order])
        index = torch.cat(picks)
        self.images.copy_(x[index.to(x.device)].to(self.images.device, self.images.dtype))
        return index

    # ------------------------------------------------------------------ persistence

    def _tensors(self) -> dict[str, Tensor]:
        tensors = {"images": self.images.detach().cpu().contiguous(), "log_lr": self.log_lr.detach().cpu().contiguous()}
        if self.learn_labels:
            tensors["label_logits"] = self.label_logits.detach().cpu().contiguous()
        else:
            tensors["labels"] = self.hard_labels.detach().cpu().contiguous()
        return tensors

    def _expected_shapes(self) -> dict[str, tuple[list[int], torch.dtype]]:
        n = self.num_images
        expected = {"images": ([n, *self.image_shape], torch.float32), "log_lr": ([], torch.float32)}
        if self.learn_labels:
            expected["label_logits"] = ([n, self.num_classes], torch.float32)
        else:
            expected["labels"] = ([n], torch.int64)
        return expected

    def save(
        self, directory: str | Path, *, source_fingerprint: str, method: str, normalisation: dict[str, Any],
        source_data: str | None = None,
    ) -> Path:
        """Write ``synset.safetensors``, ``manifest.json`` and ``grid.png`` into ``directory``.

        Each file is written atomically; other files in ``directory`` are left alone.

        Args:
            directory: created if absent.
            source_fingerprint: fingerprint of the real dataset it was distilled from
                (e.g. `anydistill.core.cache.tensor_fingerprint`).
            method: the distillation method's name (e.g. ``"mtt"``).
            normalisation: ``{"mean": [...], "std": [...]}``, one float per channel (or one for all),
                the normalisation of ``images``; used to de-normalise the grid and kept for users.
            source_data: the registry name of the data module it was distilled from (``"mnist"``),
                so that ``anydistill evaluate-synset`` finds the test set.

        Returns:
            the directory.

        Raises:
            ValueError: one line per invalid argument, all at once.
        """
        problems = []
        if not isinstance(source_fingerprint, str) or not source_fingerprint:
            problems.append(f"The 'source_fingerprint' argument of SyntheticSet.save must be a non-empty string. Got {source_fingerprint!r}.")
        if not isinstance(method, str) or not method:
            problems.append(f"The 'method' argument of SyntheticSet.save must be a non-empty string. Got {method!r}.")
        stats: dict[str, list[float]] = {}
        channels = self.image_shape[0]
        for key in ("mean", "std"):
            value = normalisation.get(key) if isinstance(normalisation, dict) else None
            try:
                floats = [float(v) for v in (value if isinstance(value, Sequence) else [value])]
            except (TypeError, ValueError):
                floats = []
            ok = len(floats) in (1, channels) and all(math.isfinite(v) for v in floats) and (key == "mean" or all(v > 0 for v in floats))
            if not ok:
                rule = "finite floats" if key == "mean" else "floats > 0"
                problems.append(
                    f"normalisation['{key}'] of SyntheticSet.save must be 1 or {channels} {rule} (one per channel). Got {value!r}."
                )
            stats[key] = floats
        if problems:
            raise ValueError("\n".join(problems))

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = save_safetensors(self._tensors())
        manifest = {
            "format": FORMAT_VERSION,
            "anydistill": __version__,
            "num_classes": self.num_classes,
            "ipc": self.ipc,
            "image_shape": list(self.image_shape),
            "learn_labels": self.learn_labels,
            "learn_lr": self.learn_lr,
            "initial_lr": self.initial_lr,
            "source": {"fingerprint": source_fingerprint, **({"data": source_data} if source_data else {})},
            "method": method,
            "normalisation": stats,
            "files": {TENSORS_FILE: {"sha256": _sha256(payload)}},
        }
        grid = self._grid_png(stats["mean"], stats["std"])
        # The manifest goes last: a crash in between leaves a checksum mismatch, never a silent mix.
        _write_bytes_atomic(directory / GRID_FILE, grid)
        _write_bytes_atomic(directory / TENSORS_FILE, payload)
        _write_bytes_atomic(directory / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
        return directory

    def _grid_png(self, mean: list[float], std: list[float]) -> bytes:
        """A PNG of a class-by-image grid (at most ``GRID_MAX_PER_CLASS`` per class), de-normalised and clipped to [0, 1].

        3-channel images are shown in RGB; any other channel count as the grey mean of the channels.
        """
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

        columns = min(self.ipc, GRID_MAX_PER_CLASS)
        c, h, w = self.image_shape
        images = self.images.detach().cpu().float().reshape(self.num_classes, self.ipc, c, h, w)[:, :columns]
        images = images * torch.tensor(std).view(1, 1, -1, 1, 1) + torch.tensor(mean).view(1, 1, -1, 1, 1)
        images = torch.nan_to_num(images, nan=0.0).clamp(0.0, 1.0)
        if c != 3:
            images = images.mean(dim=2, keepdim=True).expand(-1, -1, 3, -1, -1)
        pad = 1
        # Mosaic [K*(h+pad)+pad, columns*(w+pad)+pad, 3] with white separators.
        mosaic = np.ones((self.num_classes * (h + pad) + pad, columns * (w + pad) + pad, 3), dtype=np.float32)
        array = images.permute(0, 1, 3, 4, 2).numpy()
        for k in range(self.num_classes):
            for j in range(columns):
                top, left = pad + k * (h + pad), pad + j * (w + pad)
                mosaic[top : top + h, left : left + w] = array[k, j]
        cell = 0.45
        figure = Figure(figsize=(max(2.0, cell * columns + 0.8), max(1.5, cell * self.num_classes + 0.6)), dpi=100)
        axes = figure.add_subplot()
        axes.imshow(mosaic, interpolation="nearest")
        axes.set_xticks([pad + j * (w + pad) + w / 2 - 0.5 for j in range(columns)], [str(j) for j in range(columns)], fontsize=6)
        axes.set_yticks([pad + k * (h + pad) + h / 2 - 0.5 for k in range(self.num_classes)], [str(k) for k in range(self.num_classes)], fontsize=6)
        axes.set_xlabel("image", fontsize=7)
        axes.set_ylabel("class", fontsize=7)
        axes.set_title(f"synthetic set: {self.num_classes} classes x {self.ipc} ipc", fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()

    @classmethod
    def load(cls, directory: str | Path) -> tuple[SyntheticSet, dict[str, Any]]:
        """Load and verify a synthetic set written by `SyntheticSet.save`.

        Returns:
            (the synthetic set on the CPU, its manifest as a dict).

        Raises:
            SynsetError: a file is missing, the manifest is corrupt, the tensors fail their checksum,
                or their names or shapes do not match the manifest. One line that names the fix.
        """
        directory = Path(directory)
        fix = "save it again with SyntheticSet.save (or re-run the distillation that produced it)"
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
            checksum = manifest["files"][TENSORS_FILE]["sha256"]
            hparams = {
                "num_classes": manifest["num_classes"],
                "ipc": manifest["ipc"],
                "image_shape": manifest["image_shape"],
                "learn_labels": manifest["learn_labels"],
                "learn_lr": manifest["learn_lr"],
                "initial_lr": manifest["initial_lr"],
            }
            format_version = manifest["format"]
        except FileNotFoundError:
            raise SynsetError(
                f"{directory} has no {MANIFEST_FILE}, so it is not a saved synthetic set (or its save was interrupted): "
                f"pass the directory SyntheticSet.save wrote, or {fix}."
            ) from None
        except (OSError, ValueError, KeyError, TypeError):
            raise SynsetError(f"The {MANIFEST_FILE} of the synthetic set in {directory} is corrupt: {fix}.") from None
        if format_version != FORMAT_VERSION:
            raise SynsetError(
                f"The synthetic set in {directory} has format {format_version!r}, this anydistill reads {FORMAT_VERSION}: "
                f"load it with the anydistill version that wrote it ({manifest.get('anydistill')}), or {fix}."
            )
        try:
            synset = cls(
                hparams["num_classes"],
                hparams["ipc"],
                hparams["image_shape"],
                learn_labels=hparams["learn_labels"],
                learn_lr=hparams["learn_lr"],
                initial_lr=hparams["initial_lr"],
            )
        except (ValueError, TypeError) as error:
            reason = str(error).replace("\n", " ")
            raise SynsetError(f"The {MANIFEST_FILE} of the synthetic set in {directory} is corrupt ({reason}): {fix}.") from None
        try:
            payload = (directory / TENSORS_FILE).read_bytes()
        except FileNotFoundError:
            raise SynsetError(f"The synthetic set in {directory} has no {TENSORS_FILE}: {fix}.") from None
        if _sha256(payload) != checksum:
            raise SynsetError(f"{TENSORS_FILE} in {directory} is corrupt or was replaced (checksum mismatch with {MANIFEST_FILE}): {fix}.")
        try:
            tensors = load_safetensors(payload)
        except (SafetensorError, ValueError, OSError) as error:
            raise SynsetError(f"{TENSORS_FILE} in {directory} cannot be read ({error}): {fix}.") from None
        expected = synset._expected_shapes()
        if set(tensors) != set(expected):
            raise SynsetError(
                f"{TENSORS_FILE} in {directory} holds {sorted(tensors)}, but its manifest implies {sorted(expected)}: {fix}."
            )
        for name, (shape, dtype) in expected.items():
            got = tensors[name]
            if list(got.shape) != shape or got.dtype != dtype:
                raise SynsetError(
                    f"{TENSORS_FILE} in {directory}: '{name}' is {got.dtype} {list(got.shape)}, but its manifest implies "
                    f"{dtype} {shape}: {fix}."
                )
        with torch.no_grad():
            synset.images.copy_(tensors["images"])
            synset.log_lr.copy_(tensors["log_lr"])
            if synset.learn_labels:
                synset.label_logits.copy_(tensors["label_logits"])
            else:
                synset.hard_labels.copy_(tensors["labels"])
        return synset, manifest


def synthetic_set(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    ipc: int,
    init: Literal["real", "noise"] = "real",
    learn_labels: bool = False,
    learn_lr: bool = False,
    initial_lr: float = 0.01,
) -> SyntheticSet:
    """The recipe's ``student: {name: synthetic-set, ipc: ...}``: an empty set the method fills at
    fit time, from ``ipc`` random real images per class (``init: real``) or Gaussian noise."""
    synset = SyntheticSet(num_classes, ipc, input_shape, learn_labels=learn_labels, learn_lr=learn_lr, initial_lr=initial_lr)
    synset.init = init
    return synset
