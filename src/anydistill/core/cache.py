"""Teacher signal cache: teacher outputs for a dataset computed once, stored as safetensors shards.

Layout of one cache (a directory under the cache root, named by the fingerprints it was built for)::

    <root>/<teacher fp>-<dataset fp>-<signals fp>/
        manifest.json            teacher and dataset fingerprints, transform, signals, shard checksums
        shard-00000.safetensors  rows [0, shard_rows) of every signal ("logits", "features/<path>")
        ...

A cache is written to a temporary directory and renamed into place, so a crash never leaves a
half-written cache; on load every shard's SHA-256 is checked, and any mismatch is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from anydistill import __version__
from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher

FORMAT_VERSION = 1


def tensor_fingerprint(tensor: torch.Tensor, *extra: str) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes, plus any ``extra`` strings (e.g. a transform)."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:{'|'.join(extra)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (shards can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def signal_names(features: Sequence[str]) -> list[str]:
    """Names of the stored signals: ``logits`` and ``features/<path>`` for each tapped feature."""
    return ["logits", *(f"features/{path}" for path in features)]


def cache_directory(root: Path, teacher_fp: str, dataset_fp: str, features: Sequence[str]) -> Path:
    """Where the cache for this (teacher, dataset, signals) triple lives under ``root``."""
    signals_fp = hashlib.sha256("|".join(signal_names(features)).encode()).hexdigest()
    return root / f"{teacher_fp[:16]}-{dataset_fp[:16]}-{signals_fp[:8]}"


@contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """A staging directory next to ``directory``, renamed into place if the block succeeds and
    removed whatever happens: a crash never leaves a half-written cache under the final name. If
    another process finished the same cache first (DDP ranks build concurrently), its copy is kept.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        yield staging
        try:
            os.replace(staging, directory)
        except OSError:
            if not (directory / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_cache(
    directory: Path,
    teacher: Teacher,
    inputs: torch.Tensor,
    *,
    dataset_fingerprint: str,
    transform: str,
    features: Sequence[str] = (),
    batch_size: int = 1024,
    shard_rows: int = 16384,
) -> None:
    """Run ``teacher`` over ``inputs`` [N, ...] and write the cache at ``directory``.

    If another process finished the same cache first (DDP ranks build concurrently), its copy is
    kept: both are built from the same teacher and data, so they are identical.
    """
    with staged_directory(directory) as staging:
        shards = []
        rows = inputs.shape[0]
        progress = tqdm(total=rows, desc=f"Caching {teacher.name} signals", unit="ex", leave=False, disable=None)
        for start in range(0, rows, shard_rows):
            stop = min(start + shard_rows, rows)
            parts: dict[str, list[torch.Tensor]] = {name: [] for name in signal_names(features)}
            for lo in range(start, stop, batch_size):
                out = teacher(inputs[lo : min(lo + batch_size, stop)], taps=features)
                parts["logits"].append(out.logits.float().cpu())
                for path in features:
                    parts[f"features/{path}"].append(out.features[path].float().cpu())
                progress.update(min(lo + batch_size, stop) - lo)
            file = staging / f"shard-{len(shards):05d}.safetensors"
            save_file({name: torch.cat(chunks).contiguous() for name, chunks in parts.items()}, str(file))
            shards.append({"file": file.name, "start": start, "stop": stop, "sha256": file_sha256(file)})
        progress.close()
        manifest = {
            "format": FORMAT_VERSION,
            "anydistill": __version__,
            "teacher": {"name": teacher.name, "fingerprint": teacher.fingerprint()},
            "dataset": {"fingerprint": dataset_fingerprint, "rows": rows, "transform": transform},
            "signals": signal_names(features),
            "shards": shards,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))


def load_cache(
    directory: Path, *, teacher_fingerprint: str, dataset_fingerprint: str, transform: str, features: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Load and verify the cache at ``directory``.

    Returns:
        signal name -> tensor [N, ...] for every signal in ``signal_names(features)``.

    Raises:
        CacheError: the manifest is missing or corrupt, it was built for another teacher, dataset,
            transform or signal set, or a shard fails its checksum. The message names the fix.
    """
    fix = f"delete {directory} to rebuild it from the teacher"
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        shards = [(s["file"], s["sha256"]) for s in manifest["shards"]]
        built_for = (manifest["teacher"]["fingerprint"], manifest["dataset"]["fingerprint"], manifest["dataset"]["transform"])
    except FileNotFoundError:
        raise CacheError(f"The signal cache {directory} has no manifest.json (incomplete or not a cache): {fix}.") from None
    except (ValueError, KeyError, TypeError):
        raise CacheError(f"The manifest of the signal cache {directory} is corrupt: {fix}.") from None
    expected = (teacher_fingerprint, dataset_fingerprint, transform)
    for what, got, want in zip(("teacher", "dataset", "input transform"), built_for, expected):
        if got != want:
            raise CacheError(
                f"The signal cache {directory} was built for another {what} ({str(got)[:16]} != {str(want)[:16]}); "
                f"{fix}, or set cache.dir to another directory."
            )
    wanted = signal_names(features)
    missing = [name for name in wanted if name not in manifest.get("signals", [])]
    if missing:
        raise CacheError(f"The signal cache {directory} lacks {', '.join(missing)}: {fix} with the features listed.")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    for name, checksum in shards:
        file = directory / str(name)
        if not file.is_file() or file_sha256(file) != checksum:
            raise CacheError(f"Shard {name} of the signal cache {directory} is missing or corrupt (checksum mismatch): {fix}.")
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise CacheError(f"Shard {name} of the signal cache {directory} cannot be read ({error}): {fix}.") from None
        for name in wanted:
            parts[name].append(tensors[name])
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def open_or_build_cache(
    root: Path,
    teacher: Teacher,
    inputs: torch.Tensor,
    *,
    dataset_fingerprint: str,
    transform: str,
    features: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """Load the cache for (teacher, dataset, features) under ``root``, building it first if absent.

    Returns:
        (signals, cache directory, whether it was built now).
    """
    directory = cache_directory(root, teacher.fingerprint(), dataset_fingerprint, features)
    built = not directory.exists()
    if built:
        build_cache(directory, teacher, inputs, dataset_fingerprint=dataset_fingerprint, transform=transform, features=features)
    signals = load_cache(
        directory,
        teacher_fingerprint=teacher.fingerprint(),
        dataset_fingerprint=dataset_fingerprint,
        transform=transform,
        features=features,
    )
    return signals, directory, built
