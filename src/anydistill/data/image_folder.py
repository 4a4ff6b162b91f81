"""Users' images: one subfolder per class (``root/cat/001.png``), read with PIL."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anydistill.core.recipe import PositiveInt
from anydistill.data.arrays import ArrayClassificationData, OpenFraction

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def class_folders(root: str, where: str) -> dict[str, list[Path]]:
    """Image files of each class subfolder of ``root``, by class name (sorted).

    Raises:
        ValueError: ``root`` missing or without class subfolders, or a class folder without images.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"{where}: no such folder '{root}'. Point it at a folder with one subfolder of images per class.")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{where}: '{root}' has no class subfolders; put each class's images in a subfolder named after it "
                         f"({root}/cat/1.png, {root}/dog/2.png...).")
    files = {c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    empty = [name for name, images in files.items() if not images]
    if empty:
        raise ValueError(f"{where}: class folder{'s' if len(empty) > 1 else ''} {', '.join(repr(e) for e in empty)} of '{root}' "
                         f"hold{'' if len(empty) > 1 else 's'} no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove it.")
    return files


class ImageFolderData(ArrayClassificationData):
    """Images in class subfolders, resized to ``size`` and scaled to [0, 1], then standardised per
    channel with the training split's statistics: inputs [N, C, H, W] with C = 1 or 3.

    Args:
        train: the root of the training images; ``val`` and ``test`` roots are optional (when
            absent, that split is ``val_fraction`` / ``test_fraction`` of the training images).
            Every root uses the class names of ``train``'s subfolders.
        size: the side of the square images, or [height, width].
        mode: ``grayscale`` (C = 1) or ``rgb`` (C = 3).
        augment: random translations of up to 2 pixels each epoch.
        The rest: see `ArrayClassificationData`.
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
        self.roots = {name: path for name, path in (("train", train), ("val", val), ("test", test)) if path is not None}
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mode = mode

    def describe(self) -> str:
        return f"image folders {self.roots}, {self.mode} resized to {list(self.size)}, pixels/255"

    def read_arrays(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        from PIL import Image

        if len(self.size) != 2:
            raise ValueError(f"data.size must be one side or [height, width]; got {list(self.size)}.")
        height, width = self.size
        known: list[str] | None = None
        arrays = {}
        for name, root in self.roots.items():
            files = class_folders(root, f"data.{name}")
            if known is None:
                known = list(files)
            elif set(files) - set(known):
                raise ValueError(f"data.{name}: '{root}' has classes {sorted(set(files) - set(known))} that the training folder lacks.")
            images, labels = [], []
            for label, paths in files.items():
                for path in paths:
                    try:
                        with Image.open(path) as image:
                            image = image.convert("L" if self.mode == "grayscale" else "RGB").resize((width, height), Image.BILINEAR)
                            images.append(np.asarray(image, dtype=np.float32) / 255.0)
                    except OSError as error:
                        raise ValueError(f"data.{name}: cannot read the image '{path}' ({error}); remove or replace it.") from None
                    labels.append(label)
            x = torch.from_numpy(np.stack(images))
            x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]
            arrays[name] = (x, np.array(labels, dtype=object))
        # Labels are folder names: encode_labels maps them to sorted indices, which are the
        # training folder's (sorted) class order since every other root's classes are among them.
        return arrays
