"""``text-to-image-latents``: captioned images (or prompts alone) for distilling a text-to-image
pipeline (``diffusers-pipeline``), served as the pipeline's VAE latents and prompt ids.

A source (``train``, and optionally ``val`` / ``test``) is either

* a folder of images with a ``metadata.jsonl`` (the Hugging Face imagefolder convention: one
  ``{"file_name": "0001.png", "text": "a red cat"}`` per line, names relative to the folder), or
* a ``.txt`` file of prompts, one per line: no images, so every row's ``x`` is zero latents. Only
  for methods that never read real samples (the DMD family without the GAN term and with
  backward simulation); the evaluator's distances to such a split mean nothing.

**Prompt ids.** The distinct prompts of all the sources, sorted, form the prompt table: a row's label
``y`` is its prompt's index, ``num_classes`` is the table's length P, and label P (never in the data)
is the null label, the empty prompt of classifier-free guidance. The ``diffusers-pipeline`` model
builds the same table from the same files (its ``prompts`` option, `prompt_list`), so a label means
the same prompt to the data and to the model; the builder refuses a table of another length.

**Latents.** Images are centre-cropped to a square, resized to ``size`` pixels, scaled to [-1, 1] and
encoded with the pipeline's VAE (posterior mode times its scaling factor), in batches, once, on
first use: `setup` only reads the metadata and the VAE's config, so ``input_shape`` and
``num_classes`` (what ``anydistill validate`` needs) cost no encoding. A split without a source of its
own is a seeded fraction of the training rows (by row, not per prompt: captions are mostly unique).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anydistill.core.errors import DataNotFoundError
from anydistill.core.recipe import PositiveInt
from anydistill.data.arrays import OpenFraction
from anydistill.data.tensor_data import TensorClassificationData
from anydistill.models.pipeline_parts import frozen_vae, latent_shape, pipeline_parts, work_device

Rows = tuple[list[Path | None], list[str]]  # image files (None: prompts only) and their prompts


def read_rows(source: str, where: str) -> Rows:
    """``(files, prompts)`` of one source: a folder with ``metadata.jsonl`` or a ``.txt`` of prompts.

    Raises:
        DataNotFoundError: the source is not on this machine (a recipe still validates without it).
        ValueError: one line naming the file, line or key at fault and the fix.
    """
    path = Path(source)
    layout = ('a folder of images with metadata.jsonl ({"file_name": ..., "text": ...} per line) or a .txt file of '
              "prompts, one per line")
    if not path.exists():
        raise DataNotFoundError(f"{where}: no such folder or file '{source}' on this machine. Give {layout}.")
    if path.is_file():
        if path.suffix != ".txt":
            raise ValueError(f"{where}: '{source}' is neither a folder nor a .txt file. Give {layout}.")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"{where}: '{source}' holds no prompts; write one per line.")
        return [None] * len(prompts), prompts
    metadata = path / "metadata.jsonl"
    if not metadata.is_file():
        raise ValueError(f"{where}: '{source}' has no metadata.jsonl. Write one "
                         '{"file_name": "image.png", "text": "its caption"} per image into it.')
    files: list[Path | None] = []
    prompts: list[str] = []
    for number, line in enumerate(metadata.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: line {number} of {metadata} is not JSON; write one JSON object per line.") from None
        name, text = (row.get("file_name"), row.get("text")) if isinstance(row, dict) else (None, None)
        if not (isinstance(name, str) and isinstance(text, str)):
            raise ValueError(f'{where}: line {number} of {metadata} needs the strings "file_name" and "text"; got {line.strip()[:80]}')
        if not (path / name).is_file():
            raise ValueError(f"{where}: line {number} of {metadata} names '{name}', which is not a file in '{source}'.")
        files.append(path / name)
        prompts.append(text)
    if not files:
        raise ValueError(f"{where}: {metadata} lists no images; write one line per image.")
    return files, prompts


def prompt_list(sources: list[str], where: str) -> list[str]:
    """The prompt table of ``sources``: their distinct prompts, sorted (label i is prompt i).

    The data module and the ``diffusers-pipeline`` builder both call it on the same files.
    """
    return sorted({text for index, source in enumerate(sources) for text in read_rows(source, f"{where}[{index}]")[1]})


def read_image(file: Path, size: int) -> torch.Tensor:
    """``[3, size, size]`` in [-1, 1]: the image centre-cropped to a square and resized."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            square = ImageOps.fit(image.convert("RGB"), (size, size), Image.BICUBIC)
            pixels = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    except OSError as error:
        raise ValueError(f"data: cannot read the image '{file}' ({error}); remove or replace it.") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


class TextToImageLatents(TensorClassificationData):
    """Captioned images as VAE latents ``x`` [N, C, size/f, size/f] and prompt ids ``y`` [N]; see the
    module docstring.

    Args:
        train: the training source (a folder with metadata.jsonl, or a .txt file of prompts);
            ``val`` and ``test`` are optional sources laid out like it (when absent, that split is
            ``val_fraction`` / ``test_fraction`` of the training rows, drawn with ``split_seed``).
        pipeline: the local pipeline folder whose VAE encodes the images (``vae/``).
        size: the side of the square images, in pixels (SD1.5: 512, SDXL: 1024).
        encode_batch_size: images per VAE batch while encoding.
        encode_device: where the VAE encodes: ``auto`` (this process's GPU when there is one), ``cpu``
            or ``cuda``.
        The rest: see `anydistill.data.tensor_data.TensorClassificationData`.
    """

    def __init__(
        self,
        train: str,
        pipeline: str,
        size: PositiveInt = 512,
        val: str | None = None,
        test: str | None = None,
        val_fraction: OpenFraction = 0.05,
        test_fraction: OpenFraction = 0.05,
        split_seed: int = 0,
        encode_batch_size: PositiveInt = 16,
        encode_device: Literal["auto", "cpu", "cuda"] = "auto",
        batch_size: PositiveInt = 8,
        eval_batch_size: PositiveInt = 32,
        shuffle: bool = True,
        train_limit: PositiveInt | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, eval_batch_size, shuffle, False, train_limit, seed)
        self.sources = {name: path for name, path in (("train", train), ("val", val), ("test", test)) if path is not None}
        self.pipeline, self.size, self.split_seed = pipeline, size, split_seed
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.encode_batch_size, self.encode_device = encode_batch_size, encode_device
        self._rows: dict[str, Rows] | None = None
        self._prompts: list[str] = []
        self.transform = f"text-to-image latents of {self.sources} at {size}px through the VAE of {pipeline}"

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        root, parts = pipeline_parts(self.pipeline, "data.pipeline")
        return latent_shape(root, parts, self.size, "data.pipeline")

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.prompts)

    @property
    def prompts(self) -> list[str]:
        """The prompt table (label i is ``prompts[i]``; label ``len(prompts)`` is the empty prompt)."""
        self.setup()
        return self._prompts

    def setup(self, stage: str | None = None) -> None:
        """Read every source's rows and check the pipeline's VAE config; no image is read yet."""
        if self._rows is not None:
            return
        rows = {name: read_rows(path, f"data.{name}") for name, path in self.sources.items()}
        layouts = {name: files[0] is None for name, (files, _) in rows.items()}
        if len(set(layouts.values())) > 1:
            raise ValueError(f"data: the sources {self.sources} mix image folders and prompt files; lay every split out like train.")
        self.input_shape  # noqa: B018 - the pipeline's VAE config is checked here, where validate sees it
        self._prompts = sorted({text for _, texts in rows.values() for text in texts})
        self._rows = rows

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (latents, prompt ids) of split ``name``, encoding every split on first use."""
        self.setup()
        if not self.splits:
            super().setup()  # TensorClassificationData's: load_splits, then train_limit
        return self.splits[name]

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        rows = dict(self._rows)
        missing = {name: share for name, share in self.fractions.items() if name not in rows}
        if missing:
            files, texts = rows.pop("train")
            order = np.random.default_rng(self.split_seed).permutation(len(files))
            start = 0
            for name, share in missing.items():
                count = max(1, round(share * len(files)))
                rows[name] = ([files[i] for i in order[start : start + count]], [texts[i] for i in order[start : start + count]])
                start += count
            if start >= len(files):
                raise ValueError(f"data.train: {len(files)} rows leave none for training after the held-out splits; add rows or give val/test sources.")
            rest = sorted(order[start:])
            rows["train"] = ([files[i] for i in rest], [texts[i] for i in rest])
        index = {text: i for i, text in enumerate(self._prompts)}
        return {name: (self.encode(rows[name][0]), torch.tensor([index[t] for t in rows[name][1]], dtype=torch.long))
                for name in ("train", "val", "test")}

    def encode(self, files: list[Path | None]) -> torch.Tensor:
        """Latents ``[N, *input_shape]`` of the image files (zeros for prompt-only rows), on the CPU."""
        if files[0] is None:
            return torch.zeros(len(files), *self.input_shape)
        vae, device = frozen_vae(self.pipeline, "data.pipeline"), work_device(self.encode_device)
        batches = []
        for start in range(0, len(files), self.encode_batch_size):  # a batch of images in memory at a time
            images = torch.stack([read_image(file, self.size) for file in files[start : start + self.encode_batch_size]])
            batches.append(vae.encode(images.to(device)).cpu())
        return torch.cat(batches)
