"""The teacher-signal caches of ``lm-kd``: the teacher's next-token distributions over a training
split, computed once and stored sparse. Two kinds:

* **fixed** (``topk: k``): every position keeps its top-k log-probabilities, ids and a tail bucket;
* **adaptive** (:mod:`anydistill.lm.adaptive_topk`): every position keeps the fewest top entries
  (``k_min..k_max``) whose reconstruction is within ``KL <= kl_budget`` of the teacher, stored ragged.

Layout (conventions of :mod:`anydistill.core.cache`: staged then renamed, checksummed)::

    <root>/<teacher fp>-<dataset fp>-k<k>[t]-v<V>-<dtype>/              fixed
    <root>/<teacher fp>-<dataset fp>-adaptive<eps>-k<kmin>-<kmax>-v<V>/  adaptive
        manifest.json             format, kind, teacher, tokenizer, dataset and attention-mask
                                  fingerprints, settings, dtypes, statistics, shard checksums
        shard-00000.safetensors   blocks [start, stop). fixed: "logprobs" [n, L-1, k] (fp16 or fp32),
                                  "indices" [n, L-1, k] (int32), "tail" [n, L-1] (if any). adaptive:
                                  "logprobs" [E] fp16, "indices" [E] (int16 for V <= 32768, else
                                  int32), "tail" [n * (L-1)] fp16, "offsets" [n * (L-1) + 1] int64

Row r of the cache is block r of the split; position t predicts token t + 1 of the block. The
teacher runs under the split's attention mask, as it does online (:func:`split_attention_mask`). A
cache built for another teacher, tokenizer, data layout, mask or setting, of another kind or a newer
format, or whose shards fail their checksum, is refused with a `CacheError` naming the fix; it is
never used or overwritten.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anydistill.core.cache import staged_directory
from anydistill.core.checks import raise_problems
from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher
from anydistill.lm import signal_store as store
from anydistill.lm.adaptive_topk import RaggedTeacher, adaptive_problems, adaptive_sparsify, index_dtype_for
from anydistill.lm.common import teacher_logits
from anydistill.lm.topk import SparseTeacher, bytes_per_token, reconstruction_kl, sparsify

log = logging.getLogger(__name__)

INDEX_DTYPE = torch.int32  # any real vocabulary fits
VALUE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class TopKSignals:
    """A loaded fixed cache: ``logprobs`` and ``indices`` [N, L-1, k], ``tail`` [N, L-1] or None, and
    the manifest's ``stats`` (bytes_per_token, dense_bytes_per_token, reconstruction_kl)."""

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


@dataclass
class AdaptiveTopKSignals:
    """A loaded adaptive cache: the ragged rows of every position (``N * (L-1)``, block-major),
    ``positions = L - 1``, the vocabulary ``V`` and the manifest's ``stats`` (bytes_per_token,
    dense_bytes_per_token, reconstruction_kl (mean), max_kl, kl_budget, k_histogram, mean_k,
    violations, positions)."""

    ragged: RaggedTeacher
    positions: int
    vocab: int
    stats: dict = field(default_factory=dict)

    def rows(self, index: torch.Tensor, device: torch.device | str = "cpu") -> SparseTeacher:
        """The `SparseTeacher` of blocks ``index`` [B]: B * (L-1) rows, row-major like ``logits[:, :-1]``,
        padded to the batch's largest k without changing any row's reconstruction."""
        index = index.cpu().long()
        rows = (index[:, None] * self.positions + torch.arange(self.positions)).reshape(-1)
        sparse = self.ragged.padded(rows, self.vocab)
        return SparseTeacher(logprobs=sparse.logprobs.to(device), indices=sparse.indices.to(device),
                             tail_logprob=sparse.tail_logprob.to(device))


def topk_cache_directory(root: Path, teacher_fp: str, dataset_fp: str, k: int, tail: bool, vocab: int, dtype: str = "float16") -> Path:
    """Where the fixed cache for (teacher, dataset, k, tail, vocabulary, value dtype) lives under ``root``."""
    return root / f"{teacher_fp[:16]}-{dataset_fp[:16]}-k{k}{'t' if tail else ''}-v{vocab}-{dtype}"


def adaptive_cache_directory(root: Path, teacher_fp: str, dataset_fp: str, kl_budget: float, k_min: int, k_max: int, vocab: int) -> Path:
    """Where the adaptive cache for (teacher, dataset, budget, k range, vocabulary) lives under ``root``."""
    return root / f"{teacher_fp[:16]}-{dataset_fp[:16]}-adaptive{kl_budget:g}-k{k_min}-{k_max}-v{vocab}"


# ----------------------------------------------------------------------------------------------
# build


def _teacher_batches(teacher: Teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab: int,
                     start: int, stop: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The teacher's logits [b, L-1, V] of blocks [start, stop), ``batch_size`` blocks at a time,
    under the split's attention mask (the online path's; all ones if None)."""
    for lo in range(start, stop, batch_size):
        ids = input_ids[lo : min(lo + batch_size, stop)]
        mask = attention_mask[lo : min(lo + batch_size, stop)] if attention_mask is not None else torch.ones_like(ids)
        yield teacher_logits(teacher, ids, mask, vocab)


@torch.no_grad()
def build_topk_cache(
    directory: Path, teacher: Teacher, input_ids: torch.Tensor, *, dataset_fingerprint: str, tokenizer_fingerprint: str,
    k: int, tail: bool, vocab: int, dtype: str = "float16", batch_size: int = 32, shard_rows: int = 4096,
    attention_mask: torch.Tensor | None = None,
) -> None:
    """Run ``teacher`` over the blocks ``input_ids`` [N, L] (under ``attention_mask`` [N, L], all
    ones if None) once and write the fixed cache at ``directory``.

    The mean KL(full || reconstructed) over every cached position is measured on the way (the
    full logits exist only here) and stored in the manifest.
    """
    with staged_directory(directory) as staging:
        shards, kl_sum, positions, per_token = [], 0.0, 0, 0
        rows = input_ids.shape[0]
        for start in range(0, rows, shard_rows):
            stop = min(start + shard_rows, rows)
            parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "indices": [], "tail": []}
            for logits in _teacher_batches(teacher, input_ids, attention_mask, vocab, start, stop, batch_size):
                logits = logits.float().cpu()  # [b, L-1, V]
                sparse = sparsify(logits, k, tail, dtype=VALUE_DTYPES[dtype], index_dtype=INDEX_DTYPE)
                kl_sum += float(reconstruction_kl(logits, sparse).double().sum())
                positions += sparse.num_tokens
                per_token = bytes_per_token(sparse)
                shape = logits.shape[:-1]
                parts["logprobs"].append(sparse.logprobs.view(*shape, k))
                parts["indices"].append(sparse.indices.view(*shape, k))
                if tail:
                    parts["tail"].append(sparse.tail_logprob.view(*shape))
            store.write_shard(staging, shards, {name: torch.cat(chunks) for name, chunks in parts.items() if chunks}, start, stop)
        manifest = store.manifest(
            "fixed", teacher, tokenizer_fingerprint, dataset_fingerprint, input_ids, attention_mask,
            k=k, tail=tail, vocab=vocab, dtypes={"logprobs": dtype, "indices": str(INDEX_DTYPE)},
            stats={
                "bytes_per_token": per_token,
                "dense_bytes_per_token": 4 * vocab,  # the fp32 logits it replaces
                "reconstruction_kl": kl_sum / max(positions, 1),  # nats per token, +inf without a tail for k < V
                "positions": positions,
            },
            shards=shards,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))


@torch.no_grad()
def build_adaptive_cache(
    directory: Path, teacher: Teacher, input_ids: torch.Tensor, *, dataset_fingerprint: str, tokenizer_fingerprint: str,
    kl_budget: float, k_min: int, k_max: int, vocab: int, batch_size: int = 32, shard_rows: int = 4096,
    attention_mask: torch.Tensor | None = None,
) -> None:
    """Run ``teacher`` over the blocks ``input_ids`` [N, L] (under ``attention_mask``) once and write
    the adaptive cache at ``directory`` (:func:`~anydistill.lm.adaptive_topk.adaptive_sparsify`).

    Positions that exceed the budget even at ``k_max`` (possible only for ``k_max < V``) are counted
    in the manifest (``violations``, ``max_kl``) and logged as a warning; the cache is still written.
    """
    index_dtype = index_dtype_for(vocab)
    with staged_directory(directory) as staging:
        shards: list[dict] = []
        counts, kls = [], []
        rows = input_ids.shape[0]
        for start in range(0, rows, shard_rows):
            stop = min(start + shard_rows, rows)
            parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "indices": [], "tail": [], "counts": []}
            for logits in _teacher_batches(teacher, input_ids, attention_mask, vocab, start, stop, batch_size):
                ragged, kl = adaptive_sparsify(logits, kl_budget, k_min, k_max)
                parts["logprobs"].append(ragged.logprobs)
                parts["indices"].append(ragged.indices)
                parts["tail"].append(ragged.tail_logprob)
                parts["counts"].append(ragged.counts)
                kls.append(kl)
            shard_counts = torch.cat(parts.pop("counts"))
            counts.append(shard_counts)
            tensors = {name: torch.cat(chunks) for name, chunks in parts.items()}
            tensors["offsets"] = torch.cat([shard_counts.new_zeros(1), shard_counts.cumsum(0)])  # local to the shard
            store.write_shard(staging, shards, tensors, start, stop)
        k, kl = torch.cat(counts), torch.cat(kls)
        values, histogram = k.unique(return_counts=True)
        violations = int((kl > kl_budget).sum())
        stats = {
            "bytes_per_token": float(k.double().mean()) * (2 + index_dtype.itemsize) + 2 + 8,  # entries, tail, offset
            "dense_bytes_per_token": 4 * vocab,  # the fp32 logits it replaces
            "reconstruction_kl": float(kl.mean()), "max_kl": float(kl.max()), "kl_budget": kl_budget,
            "mean_k": float(k.double().mean()), "k_histogram": {str(int(v)): int(c) for v, c in zip(values, histogram)},
            "violations": violations, "positions": int(k.numel()),
        }
        if violations:
            # Below k_max = V the fix is more entries; at V only fp16 rounding is left, so the budget is too small.
            fix = f"raise k_max (at most V={vocab}) or kl_budget" if k_max < vocab else "raise kl_budget above fp16 storage's rounding"
            log.warning("adaptive top-k cache %s: %d of %d positions exceed KL <= %g even at k_max=%d (max %.3g nats): %s",
                        directory, violations, k.numel(), kl_budget, k_max, stats["max_kl"], fix)
        manifest = store.manifest(
            "adaptive", teacher, tokenizer_fingerprint, dataset_fingerprint, input_ids, attention_mask,
            k="adaptive", tail=True, vocab=vocab, kl_budget=kl_budget, k_min=k_min, k_max=k_max,
            dtypes={"logprobs": "float16", "indices": str(index_dtype), "offsets": "torch.int64"},
            stats=stats, shards=shards,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))


# ----------------------------------------------------------------------------------------------
# load


def load_topk_cache(
    directory: Path, *, teacher_fingerprint: str, dataset_fingerprint: str, tokenizer_fingerprint: str,
    k: int, tail: bool, vocab: int, dtype: str = "float16", attention_fingerprint: str = store.ALL_ONES,
) -> TopKSignals:
    """Load and verify the fixed cache at ``directory``.

    Raises:
        CacheError: missing or corrupt manifest, a newer format, an adaptive cache, built for another
            teacher, tokenizer, dataset, attention mask, k, tail setting or vocabulary, or a shard
            that fails its checksum; the message names the fix.
    """
    fields = {"teacher": "teacher.fingerprint", "tokenizer": "tokenizer.fingerprint", "dataset": "dataset.fingerprint",
              "attention mask": "attention", "k": "k", "tail": "tail", "vocabulary": "vocab", "value dtype": "dtypes.logprobs"}
    built_for, shards, stats = store.read_manifest(directory, "fixed", fields)
    store.check_built_for(directory, built_for, {
        "teacher": teacher_fingerprint, "tokenizer": tokenizer_fingerprint, "dataset": dataset_fingerprint,
        "attention mask": attention_fingerprint, "k": k, "tail": tail, "vocabulary": vocab, "value dtype": dtype})
    parts = store.read_shards(directory, shards, ("logprobs", "indices", "tail") if tail else ("logprobs", "indices"))
    return TopKSignals(
        logprobs=torch.cat(parts["logprobs"]), indices=torch.cat(parts["indices"]),
        tail=torch.cat(parts["tail"]) if tail else None, stats=stats,
    )


def load_adaptive_cache(
    directory: Path, *, teacher_fingerprint: str, dataset_fingerprint: str, tokenizer_fingerprint: str,
    kl_budget: float, k_min: int, k_max: int, vocab: int, attention_fingerprint: str = store.ALL_ONES,
) -> AdaptiveTopKSignals:
    """Load and verify the adaptive cache at ``directory`` (refusals as :func:`load_topk_cache`)."""
    fields = {"teacher": "teacher.fingerprint", "tokenizer": "tokenizer.fingerprint", "dataset": "dataset.fingerprint",
              "attention mask": "attention", "KL budget": "kl_budget", "k_min": "k_min", "k_max": "k_max",
              "vocabulary": "vocab", "block size": "dataset.block_size"}
    built_for, shards, stats = store.read_manifest(directory, "adaptive", fields)
    store.check_built_for(directory, built_for, {
        "teacher": teacher_fingerprint, "tokenizer": tokenizer_fingerprint, "dataset": dataset_fingerprint,
        "attention mask": attention_fingerprint, "KL budget": kl_budget, "k_min": k_min, "k_max": k_max, "vocabulary": vocab})
    parts = store.read_shards(directory, shards, ("logprobs", "indices", "tail", "offsets"))
    positions = int(built_for["block size"]) - 1
    # Offsets are local to each shard: shift them by the entries of the shards before.
    offsets, base = [torch.zeros(1, dtype=torch.int64)], 0
    for (name, _), values, tail, local in zip(shards, parts["logprobs"], parts["tail"], parts["offsets"]):
        consistent = (local.numel() == tail.numel() + 1 and tail.numel() % max(positions, 1) == 0
                      and int(local[0]) == 0 and int(local[-1]) == values.numel() and bool((local[1:] > local[:-1]).all()))
        if not consistent:
            raise CacheError(f"Shard {name} of the teacher cache {directory} has inconsistent offsets: {store.fix_hint(directory)}.")
        offsets.append(local[1:] + base)
        base += values.numel()
    ragged = RaggedTeacher(logprobs=torch.cat(parts["logprobs"]), indices=torch.cat(parts["indices"]),
                           tail_logprob=torch.cat(parts["tail"]), offsets=torch.cat(offsets))
    return AdaptiveTopKSignals(ragged=ragged, positions=positions, vocab=vocab, stats=stats)


# ----------------------------------------------------------------------------------------------
# entry points


def open_or_build_topk_cache(
    root: Path, teacher: Teacher, input_ids: torch.Tensor, *, dataset_fingerprint: str, tokenizer_fingerprint: str,
    k: int, tail: bool, vocab: int, dtype: str = "float16", attention_mask: torch.Tensor | None = None,
) -> tuple[TopKSignals, Path, bool]:
    """Load the fixed cache for (teacher, dataset, k, tail, vocabulary) under ``root``, building it first if absent.

    ``attention_mask`` [N, L] is the split's (:func:`split_attention_mask`); None means all ones
    (right for unpadded blocks only).

    Returns:
        (signals, cache directory, whether it was built now).
    """
    teacher_fp = teacher.fingerprint()
    directory = topk_cache_directory(root, teacher_fp, dataset_fingerprint, k, tail, vocab, dtype)
    built = not directory.exists()
    if built:
        build_topk_cache(directory, teacher, input_ids, dataset_fingerprint=dataset_fingerprint, tokenizer_fingerprint=tokenizer_fingerprint,
                         k=k, tail=tail, vocab=vocab, dtype=dtype, attention_mask=attention_mask)
    signals = load_topk_cache(directory, teacher_fingerprint=teacher_fp, dataset_fingerprint=dataset_fingerprint,
                              tokenizer_fingerprint=tokenizer_fingerprint, k=k, tail=tail, vocab=vocab, dtype=dtype,
                              attention_fingerprint=store.attention_fingerprint(attention_mask))
    return signals, directory, built


def open_or_build_adaptive_cache(
    root: Path, teacher: Teacher, input_ids: torch.Tensor, *, dataset_fingerprint: str, tokenizer_fingerprint: str,
    kl_budget: float, k_min: int, k_max: int, vocab: int, attention_mask: torch.Tensor | None = None,
) -> tuple[AdaptiveTopKSignals, Path, bool]:
    """Load the adaptive cache for (teacher, dataset, kl_budget, k_min, k_max, vocabulary) under
    ``root``, building it first if absent (``attention_mask`` as in :func:`open_or_build_topk_cache`).

    Raises:
        ValueError: the settings' problems (:func:`~anydistill.lm.adaptive_topk.adaptive_problems`).

    Returns:
        (signals, cache directory, whether it was built now).
    """
    raise_problems(adaptive_problems(kl_budget, k_min, k_max, vocab))
    teacher_fp = teacher.fingerprint()
    directory = adaptive_cache_directory(root, teacher_fp, dataset_fingerprint, kl_budget, k_min, k_max, vocab)
    built = not directory.exists()
    if built:
        build_adaptive_cache(directory, teacher, input_ids, dataset_fingerprint=dataset_fingerprint, tokenizer_fingerprint=tokenizer_fingerprint,
                             kl_budget=kl_budget, k_min=k_min, k_max=k_max, vocab=vocab, attention_mask=attention_mask)
    signals = load_adaptive_cache(directory, teacher_fingerprint=teacher_fp, dataset_fingerprint=dataset_fingerprint,
                                  tokenizer_fingerprint=tokenizer_fingerprint, kl_budget=kl_budget, k_min=k_min, k_max=k_max,
                                  vocab=vocab, attention_fingerprint=store.attention_fingerprint(attention_mask))
    return signals, directory, built


def open_signals(
    who: str, teacher: Teacher, datamodule: Any, *, vocab: int, root: str | Path, topk: int | str, tail: bool = True,
    dtype: str = "float16", kl_budget: float = 1e-3, k_min: int = 1, k_max: int | None = None,
) -> TopKSignals | AdaptiveTopKSignals:
    """The cache a method asked for (``topk``: an int for the fixed cache, ``"adaptive"`` for the
    adaptive one; ``k_max`` None = the vocabulary) over ``datamodule``'s training split, under the
    split's attention mask, opened or built, with one log line of its statistics for ``who``."""
    from anydistill.data.tokenizers import tokenizer_fingerprint

    ids = datamodule.split("train")[0]
    common = dict(dataset_fingerprint=datamodule.fingerprint("train"), tokenizer_fingerprint=tokenizer_fingerprint(datamodule.tokenizer),
                  vocab=vocab, attention_mask=store.split_attention_mask(datamodule, "train"))
    if topk == "adaptive":
        k_max = vocab if k_max is None else k_max
        signals, directory, built = open_or_build_adaptive_cache(Path(root), teacher, ids, kl_budget=kl_budget, k_min=k_min, k_max=k_max, **common)
        stats = signals.stats
        log.info("%s: adaptive top-k cache %s %s: eps %g, mean k %.1f, %.1f bytes/token, KL(full || reconstructed) mean %.3g, max %.3g nats/token",
                 who, directory, "built" if built else "loaded", kl_budget, stats["mean_k"], stats["bytes_per_token"],
                 stats["reconstruction_kl"], stats["max_kl"])
        return signals
    signals, directory, built = open_or_build_topk_cache(Path(root), teacher, ids, k=int(topk), tail=tail, dtype=dtype, **common)
    stats = signals.stats
    log.info("%s: top-k cache %s %s: k %d, %.1f bytes/token, KL(full || reconstructed) = %.3g nats/token",
             who, directory, "built" if built else "loaded", int(topk), stats["bytes_per_token"], stats["reconstruction_kl"])
    return signals


def signal_problems(who: str, topk: object, vocab: int, kl_budget: float, k_min: int, k_max: int | None) -> list[str]:
    """One line per problem of a method's cache settings (``topk`` an int <= V, or ``"adaptive"`` with valid ε and k range)."""
    if topk is None:
        return []
    if topk == "adaptive":
        return adaptive_problems(kl_budget, k_min, vocab if k_max is None else k_max, vocab)
    if isinstance(topk, int) and topk > vocab:
        return [f"The 'topk' parameter of {who} must be <= the vocabulary ({vocab}) or 'adaptive'. Got {topk}."]
    return []
