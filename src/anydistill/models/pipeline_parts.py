"""The parts of a local diffusers pipeline folder (what ``pipeline.save_pretrained(folder)`` writes:
``model_index.json`` and one subfolder per component), loaded with ``local_files_only``: nothing is
downloaded. Shared by the ``diffusers-pipeline`` builder and the ``text-to-image-latents`` data.

`FrozenVAE` holds the pipeline's autoencoder outside every module: the networks that carry it for
encoding and decoding never show it in ``parameters()`` or ``state_dict()``, so no optimiser trains
it and no checkpoint or export saves it.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anydistill.core.errors import DataNotFoundError, first_line

LIBRARIES = ("diffusers", "transformers")  # the only places a component's class is looked up


def pipeline_parts(path: str, where: str) -> tuple[Path, dict[str, tuple[str, str]]]:
    """``(root, {component: (library, class name)})`` of the pipeline saved in ``path``.

    Raises:
        DataNotFoundError: no such folder on this machine (a recipe still validates without it).
        ValueError: a folder that is not a saved pipeline (no readable ``model_index.json``).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"{where}: no pipeline folder '{path}' on this machine. Save the pipeline there with "
                                "pipeline.save_pretrained(folder) (nothing is downloaded).")
    index = root / "model_index.json"
    try:
        value = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{where}: '{path}' has no readable model_index.json ({type(error).__name__}); give the folder that "
                         "pipeline.save_pretrained wrote (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {index} does not hold a JSON object; re-save the pipeline with save_pretrained.")
    parts = {name: (entry[0], entry[1]) for name, entry in value.items()
             if isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)}
    return root, parts


def part_class(root: Path, parts: dict[str, tuple[str, str]], name: str, where: str) -> type:
    """The class ``model_index.json`` names for component ``name`` (one line naming the fix otherwise)."""
    if name not in parts:
        raise ValueError(f"{where}: the pipeline in '{root}' has no {name} (model_index.json lists {', '.join(sorted(parts)) or 'nothing'}); "
                         "give the folder of a complete text-to-image pipeline.")
    library, class_name = parts[name]
    cls = getattr(importlib.import_module(library), class_name, None) if library in LIBRARIES else None
    if not isinstance(cls, type):
        raise ValueError(f"{where}: {root / 'model_index.json'} names {library}.{class_name} for {name}, which is not a class of "
                         f"{' or '.join(LIBRARIES)} installed here; re-save the pipeline with this version of diffusers.")
    return cls


def load_part(root: Path, parts: dict[str, tuple[str, str]], name: str, where: str) -> Any:
    """Component ``name`` read from ``root/name`` with ``from_pretrained(local_files_only=True)``."""
    cls = part_class(root, parts, name, where)
    folder = root / name
    if not folder.is_dir():
        raise ValueError(f"{where}: model_index.json lists {name} but '{folder}' is missing; re-save the pipeline with save_pretrained.")
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - diffusers and transformers raise many types for a broken folder
        raise ValueError(f"{where}: cannot load {cls.__name__} from '{folder}' ({first_line(error)}); re-save it with save_pretrained.") from None


def latent_shape(root: Path, parts: dict[str, tuple[str, str]], size: int, where: str) -> tuple[int, int, int]:
    """``(C, size / f, size / f)``: the VAE latents of ``size x size`` images, read from ``vae/config.json``
    alone (f = 2 per down block after the first), so the shape is known without loading any weights."""
    part_class(root, parts, "vae", where)
    try:
        config = json.loads((root / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{where}: cannot read {root / 'vae' / 'config.json'} ({type(error).__name__}); re-save the pipeline.") from None
    factor = 2 ** (len(config.get("block_out_channels", [0])) - 1)
    if size % factor:
        raise ValueError(f"{where}: the image size {size} is not a multiple of the VAE's downsampling factor {factor}; "
                         f"give a size such as {size - size % factor or factor}.")
    return int(config.get("latent_channels", 4)), size // factor, size // factor


def work_device(choice: str) -> torch.device:
    """Where frozen parts run once (encoding images or prompts): ``cpu``, ``cuda``, or ``auto``, this
    process's GPU when there is one (``LOCAL_RANK`` under DDP, so each process uses its own)."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class SharedOnCopy:
    """Held by networks as a plain attribute: ``copy.deepcopy`` of a network (the fake score, EMA and
    routed copies) shares it instead of copying frozen weights or tables."""

    def __deepcopy__(self, memo: dict) -> SharedOnCopy:
        return self


class FrozenVAE(SharedOnCopy):
    """A pipeline's ``AutoencoderKL``, frozen, in eval mode, moved to the device of what it is given.

    Latents are the VAE's posterior mode, ``(z - shift_factor) * scaling_factor`` (the scaling the
    pipeline's denoiser was trained on; shift 0 when the config has none).
    """

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae.eval().requires_grad_(False)
        self.scaling = float(vae.config.get("scaling_factor", 1.0) or 1.0)
        self.shift = float(vae.config.get("shift_factor", 0.0) or 0.0)

    def _on(self, device: torch.device) -> torch.nn.Module:
        return self.vae.to(device)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Latents ``[B, C, H/f, W/f]`` of images ``[B, 3, H, W]`` in [-1, 1] (float32)."""
        vae = self._on(images.device)
        latents = vae.encode(images.to(vae.dtype)).latent_dist.mode()
        return ((latents - self.shift) * self.scaling).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] (float32) of scaled latents ``[B, C, h, w]``."""
        vae = self._on(latents.device)
        images = vae.decode((latents / self.scaling + self.shift).to(vae.dtype)).sample
        return images.float().clamp(-1, 1)


def frozen_vae(path: str, where: str) -> FrozenVAE:
    """The VAE of the pipeline in ``path``, loaded once per process: the teacher, the student and the
    data share it (errors name ``where``, the recipe key that gave the path)."""
    root, parts = pipeline_parts(path, where)
    part_class(root, parts, "vae", where)
    return _vae_of(str(root.resolve()))


@functools.lru_cache(maxsize=2)
def _vae_of(root: str) -> FrozenVAE:
    where = "diffusers-pipeline"
    return FrozenVAE(load_part(Path(root), pipeline_parts(root, where)[1], "vae", where))
