"""The top-k teacher signal cache of ``lm-kd``: the teacher's next-token distributions over a
training split, computed once and stored as top-k log-probabilities, ids and a tail bucket.

Layout (conventions of :mod:`anydistill.core.cache`: staged then renamed, checksummed)::

    <root>/<teacher fp>-<dataset fp>-k<k>[t]-v<V>/
        manifest.json             teacher, tokenizer and dataset fingerprints, k, tail, vocabulary,
                                  dtypes, bytes per token, KL(full || reconstructed), shard checksums
        shard-00000.safetensors   rows [start, stop) of the blocks: "logprobs" [n, L-1, k] (fp16 or fp32),
                                  "indices" [n, L-1, k] (int32), "tail" [n, L-1] (same dtype, if any)

Row r of the cache is block r of the split; position t predicts token t + 1 of the block. A cache
built for another teacher, tokenizer, data layout, k or tail setting, or whose shards fail their
checksum, is refused with a `CacheError` naming the fix; it is never used or overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anydistill import __version__
from anydistill.core.cache import file_sha256
from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher
from anydistill.lm.common import teacher_logits
from anydistill.lm.topk import SparseTeacher, bytes_per_token, reconstruction_kl, sparsify

FORMAT_VERSION = 1
INDEX_DTYPE = torch.int32  # any real vocabulary fits
VALUE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class TopKSignals:
    """A loaded cache: ``logprobs`` and ``indices`` [N, L-1, k], ``tail`` [N, L-1] or None, and the
    manifest's ``stats`` (bytes_per_token, dense_bytes_per_token, reconstruction_kl)."""

    logprobs: torch.Tensor
    indices: torch.Tensor
    tail: torch.Tensor | None
    stats: dict = field(default_factory=dict)

    def rows(self, index: torch.Tensor, device: torch.device | str = "cpu") -> SparseTeacher:
        """The `SparseTeacher` of blocks ``index`` [B]: B * (L-1) rows, row-major like ``logits[:, :-1]``."""
        index = index.cpu()
        k = self.logprobs.shape[-1]
        return SparseTeacher(
            logprobs=self.logprobs[index].reshape(-1, k).to(device),
            indices=self.indices[index].reshape(-1, k).to(device),
            tail_logprob=self.tail[index].reshape(-1).to(device) if self.tail is not None else None,
        )


def topk_cache_directory(root: Path, teacher_fp: str, dataset_fp: str, k: int, tail: bool, vocab: int, dtype: str = "float16") -> Path:
    """Where the cache for (teacher, dataset, k, tail, vocabulary, value dtype) lives under ``root``."""
    return root / f"{teacher_fp[:16]}-{dataset_fp[:16]}-k{k}{'t' if tail else ''}-v{vocab}-{dtype}"


@torch.no_grad()
def build_topk_cache(
    directory: Path, teacher: Teacher, input_ids: torch.Tensor, *, dataset_fingerprint: str, tokenizer_fingerprint: str,
    k: int, tail: bool, vocab: int, dtype: str = "float16", batch_size: int = 32, shard_rows: int = 4096,
) -> None:
    """Run ``teacher`` over the blocks ``input_ids`` [N, L] once and write the cache at ``directory``.

    The mean KL(full || reconstructed) over every cached position is measured on the way (the
    full logits exist only here) and stored in the manifest.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        shards, kl_sum, positions, per_token = [], 0.0, 0, 0
        rows = input_ids.shape[0]
        for start in range(0, rows, shard_rows):
            stop = min(start + shard_rows, rows)
            parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "indices": [], "tail": []}
            for lo in range(start, stop, batch_size):
                ids = input_ids[lo : min(lo + batch_size, stop)]
                logits = teacher_logits(teacher, ids, torch.ones_like(ids), vocab).float().cpu()  # [b, L-1, V]
                sparse = sparsify(logits, k, tail, dtype=VALUE_DTYPES[dtype], index_dtype=INDEX_DTYPE)
                kl_sum += float(reconstruction_kl(logits, sparse).double().sum())
                positions += sparse.num_tokens
                per_token = bytes_per_token(sparse)
                shape = logits.shape[:-1]
                parts["logprobs"].append(sparse.logprobs.view(*shape, k))
                parts["indices"].append(sparse.indices.view(*shape, k))
                if tail:
                    parts["tail"].append(sparse.tail_logprob.view(*shape))
            file = staging / f"shard-{len(shards):05d}.safetensors"
            save_file({name: torch.cat(chunks).contiguous() for name, chunks in parts.items() if chunks}, str(file))
            shards.append({"file": file.name, "start": start, "stop": stop, "sha256": file_sha256(file)})
        manifest = {
            "format": FORMAT_VERSION,
            "anydistill": __version__,
            "teacher": {"name": teacher.name, "fingerprint": teacher.fingerprint()},
            "tokenizer": {"fingerprint": tokenizer_fingerprint},
            "dataset": {"fingerprint": dataset_fingerprint, "rows": rows, "block_size": int(input_ids.shape[1])},
            "k": k, "tail": tail, "vocab": vocab,
            "dtypes": {"logprobs": dtype, "indices": str(INDEX_DTYPE)},
            "stats": {
                "bytes_per_token": per_token,
                "dense_bytes_per_token": 4 * vocab,  # the fp32 logits it replaces
                "reconstruction_kl": kl_sum / max(positions, 1),  # nats per token, +inf without a tail for k < V
                "positions": positions,
            },
            "shards": shards,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            os.replace(staging, directory)
        except OSError:
            if not (directory / "manifest.json").exists():  # another rank finished the same cache first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_topk_cache(
    directory: Path, *, teacher_fingerprint: str, dataset_fingerprint: str, tokenizer_fingerprint: str,
    k: int, tail: bool, vocab: int, dtype: str = "float16",
) -> TopKSignals:
    """Load and verify the cache at ``directory``.

    Raises:
        CacheError: missing or corrupt manifest, built for another teacher, tokenizer, dataset, k,
            tail setting or vocabulary, or a shard that fails its checksum; the message names the fix.
    """
    fix = f"delete {directory} to rebuild it from the teacher"
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        built_for = {
            "teacher": manifest["teacher"]["fingerprint"], "tokenizer": manifest["tokenizer"]["fingerprint"],
            "dataset": manifest["dataset"]["fingerprint"], "k": manifest["k"], "tail": manifest["tail"],
            "vocabulary": manifest["vocab"], "value dtype": manifest["dtypes"]["logprobs"],
        }
        shards = [(s["file"], s["sha256"]) for s in manifest["shards"]]
        stats = dict(manifest["stats"])
    except FileNotFoundError:
        raise CacheError(f"The top-k cache {directory} has no manifest.json (incomplete or not a cache): {fix}.") from None
    except (ValueError, KeyError, TypeError):
        raise CacheError(f"The manifest of the top-k cache {directory} is corrupt: {fix}.") from None
    expected = {"teacher": teacher_fingerprint, "tokenizer": tokenizer_fingerprint, "dataset": dataset_fingerprint,
                "k": k, "tail": tail, "vocabulary": vocab, "value dtype": dtype}
    for what, want in expected.items():
        if built_for[what] != want:
            raise CacheError(f"The top-k cache {directory} was built for another {what} ({str(built_for[what])[:16]} != "
                             f"{str(want)[:16]}); {fix}, or set the method's cache_dir to another directory.")
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "indices": [], "tail": []}
    for name, checksum in shards:
        file = directory / str(name)
        if not file.is_file() or file_sha256(file) != checksum:
            raise CacheError(f"Shard {name} of the top-k cache {directory} is missing or corrupt (checksum mismatch): {fix}.")
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise CacheError(f"Shard {name} of the top-k cache {directory} cannot be read ({error}): {fix}.") from None
        for key in parts if tail else ("logprobs", "indices"):
            parts[key].append(tensors[key])
    return TopKSignals(
        logprobs=torch.cat(parts["logprobs"]), indices=torch.cat(parts["indices"]),
        tail=torch.cat(parts["tail"]) if tail else None, stats=stats,
    )


def open_or_build_topk_cache(
    root: Path, teacher: Teacher, input_ids: torch.Tensor, *, dataset_fingerprint: str, tokenizer_fingerprint: str,
    k: int, tail: bool, vocab: int, dtype: str = "float16",
) -> tuple[TopKSignals, Path, bool]:
    """Load the cache for (teacher, dataset, k, tail, vocabulary) under ``root``, building it first if absent.

    Returns:
        (signals, cache directory, whether it was built now).
    """
    teacher_fp = teacher.fingerprint()
    directory = topk_cache_directory(root, teacher_fp, dataset_fingerprint, k, tail, vocab, dtype)
    built = not directory.exists()
    if built:
        build_topk_cache(directory, teacher, input_ids, dataset_fingerprint=dataset_fingerprint,
                         tokenizer_fingerprint=tokenizer_fingerprint, k=k, tail=tail, vocab=vocab, dtype=dtype)
    signals = load_topk_cache(directory, teacher_fingerprint=teacher_fp, dataset_fingerprint=dataset_fingerprint,
                              tokenizer_fingerprint=tokenizer_fingerprint, k=k, tail=tail, vocab=vocab, dtype=dtype)
    return signals, directory, built

