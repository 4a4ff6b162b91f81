"""What the teacher caches of the LM family share (:mod:`anydistill.lm.topk_cache`: fixed and
adaptive top-k; :mod:`anydistill.lm.hidden_cache`: hidden states): the split's attention mask and
its fingerprint, shards, the manifest and the checks that refuse a cache built for something else.

A cache directory holds ``manifest.json`` (format, kind, teacher, tokenizer, dataset and
attention-mask fingerprints, the kind's settings and statistics, shard checksums) and
``shard-NNNNN.safetensors`` files of consecutive blocks of the training split, written to a
staging directory and renamed into place (`core.cache.staged_directory`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anydistill import __version__
from anydistill.core.cache import file_sha256, tensor_fingerprint
from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher

# 1: fixed caches, teacher run with an all-ones attention mask. 2: the split's attention mask, and
# a "kind" (fixed | adaptive | hidden). An adaptive manifest also says "k": "adaptive", so a build
# that predates format 2 (which reads no format) refuses it as "built for another k".
FORMAT_VERSION = 2
ALL_ONES = "all-ones"  # the attention fingerprint of an unpadded split (and of every format-1 cache)
KIND_NAMES = {"fixed": "fixed-k", "adaptive": "adaptive-k", "hidden": "hidden-state"}


def split_attention_mask(datamodule: Any, name: str = "train") -> torch.Tensor:
    """The attention mask [N, L] that ``datamodule``'s loaders serve with the rows of split ``name``:
    its ``attention[name]`` where it keeps one (lm-dataset: 0 on padding), else all ones (unpadded
    blocks, as the Shakespeare loaders serve)."""
    ids, _ = datamodule.split(name)
    kept = getattr(datamodule, "attention", None)
    if isinstance(kept, dict) and name in kept:
        return kept[name]
    return torch.ones_like(ids)


def attention_fingerprint(attention_mask: torch.Tensor | None) -> str:
    """``"all-ones"`` for no mask or an all-ones one (what every format-1 cache was built with), else the mask's SHA-256."""
    if attention_mask is None or bool((attention_mask != 0).all()):
        return ALL_ONES
    return tensor_fingerprint(attention_mask.ne(0))


def write_shard(staging: Path, shards: list[dict], tensors: dict[str, torch.Tensor], start: int, stop: int) -> None:
    """Save blocks ``[start, stop)``'s ``tensors`` as the next shard and append its entry (file, rows, SHA-256) to ``shards``."""
    file = staging / f"shard-{len(shards):05d}.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(file))
    shards.append({"file": file.name, "start": start, "stop": stop, "sha256": file_sha256(file)})


def manifest(kind: str, teacher: Teacher, tokenizer_fingerprint: str, dataset_fingerprint: str, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None, **settings: Any) -> dict:
    """The manifest fields every kind shares, plus the kind's ``settings`` (its shards and stats included)."""
    return {
        "format": FORMAT_VERSION, "kind": kind, "anydistill": __version__,
        "teacher": {"name": teacher.name, "fingerprint": teacher.fingerprint()},
        "tokenizer": {"fingerprint": tokenizer_fingerprint},
        "dataset": {"fingerprint": dataset_fingerprint, "rows": int(input_ids.shape[0]), "block_size": int(input_ids.shape[1])},
        "attention": attention_fingerprint(attention_mask),
        **settings,
    }


def fix_hint(directory: Path) -> str:
    """The fix every refusal names."""
    return f"delete {directory} to rebuild it from the teacher"


def read_manifest(directory: Path, kind: str, fields: dict[str, Any]) -> tuple[dict, list[tuple[str, str]], dict]:
    """The manifest's format-checked fields ``{what: json path}``, shards and stats."""
    fix = fix_hint(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        version, built_kind = manifest["format"], manifest.get("kind", "fixed")
        built_for = {what: dig(manifest, path) for what, path in fields.items()}
        shards = [(s["file"], s["sha256"]) for s in manifest["shards"]]
        stats = dict(manifest["stats"])
    except FileNotFoundError:
        raise CacheError(f"The teacher cache {directory} has no manifest.json (incomplete or not a cache): {fix}.") from None
    except (ValueError, KeyError, TypeError):
        raise CacheError(f"The manifest of the teacher cache {directory} is corrupt: {fix}.") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CacheError(f"The teacher cache {directory} has format {version}, newer than this anydistill {__version__} reads "
                         f"({FORMAT_VERSION}): upgrade anydistill, or {fix}.")
    if built_kind != kind:
        raise CacheError(f"The teacher cache {directory} holds {KIND_NAMES.get(built_kind, built_kind)} signals, not {KIND_NAMES[kind]} ones: {fix}, or set the method's "
                         "cache_dir to another directory.")
    return built_for, shards, stats


def dig(manifest: dict, path: str) -> Any:
    """The manifest field at the dotted ``path``."""
    # Format 1 had no attention field: its teacher always ran with an all-ones mask.
    if path == "attention":
        return manifest.get("attention", ALL_ONES)
    value = manifest
    for key in path.split("."):
        value = value[key]
    return value


def check_built_for(directory: Path, built_for: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse (`CacheError`) a cache whose manifest fields ``built_for`` differ from ``expected`` ({what: value})."""
    for what, want in expected.items():
        if built_for[what] == want:
            continue
        if what == "attention mask" and built_for[what] == ALL_ONES:
            raise CacheError(f"The teacher cache {directory} was built with the teacher attending to padding (all-ones "
                             f"attention mask; format 1 caches always were), unlike the online teacher: {fix_hint(directory)}.")
        raise CacheError(f"The teacher cache {directory} was built for another {what} ({str(built_for[what])[:16]} != "
                         f"{str(want)[:16]}); {fix_hint(directory)}, or set the method's cache_dir to another directory.")


def read_shards(directory: Path, shards: list[tuple[str, str]], keys: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
    """``{key: [one tensor per shard]}`` after each shard's checksum; a missing key or bad file is a `CacheError`."""
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    fix = fix_hint(directory)
    for name, checksum in shards:
        file = directory / str(name)
        if not file.is_file() or file_sha256(file) != checksum:
            raise CacheError(f"Shard {name} of the teacher cache {directory} is missing or corrupt (checksum mismatch): {fix}.")
        try:
            tensors = load_file(str(file))
            for key in keys:
                parts[key].append(tensors[key])
        except (SafetensorError, OSError, KeyError) as error:
            raise CacheError(f"Shard {name} of the teacher cache {directory} cannot be read ({error}): {fix}.") from None
    return parts


