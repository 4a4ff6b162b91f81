"""The hidden-state teacher cache of ``lm-kd`` (``hidden_cache: true``): the teacher's last hidden
states over the training split, stored in fp16 or bf16 with its LM head, so that offline KD is
exact over the whole vocabulary. At training time the loss forms the teacher's logits from them
chunk by chunk (`lm.fused_head`): no top-k truncation, ``2 * H`` bytes per token whatever ``V``.

Layout (`lm.signal_store`: staged then renamed, checksummed, refused with the fix when foreign)::

    <root>/<teacher fp>-<dataset fp>-hidden-<dtype>-v<V>/
        manifest.json             kind "hidden", fingerprints, hidden size, dtype, statistics, checksums
        head.safetensors          "weight" [V, H] (the teacher's head rows [:V], its own dtype), "bias" [V] if any
        shard-00000.safetensors   "hidden" [n, L-1, H] of blocks [start, stop)

The only approximation is the rounding of the hidden states; the manifest records the mean and
max KL(teacher || teacher from the rounded states) over every cached position, measured at build.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anydistill.core.cache import file_sha256, staged_directory
from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher
from anydistill.lm import signal_store as store
from anydistill.lm.head import Head, lm_head, teacher_hidden

log = logging.getLogger(__name__)

HIDDEN_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
HEAD_FILE = "head.safetensors"


@dataclass
class HiddenSignals:
    """A loaded hidden-state cache: ``hidden`` [N, L-1, H] (fp16/bf16), the teacher's ``head`` and
    the manifest's ``stats`` (bytes_per_token, dense_bytes_per_token, reconstruction_kl, max_kl)."""

    hidden: torch.Tensor
    head: Head
    stats: dict = field(default_factory=dict)

    def rows(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Blocks ``index`` [B] as ``[B, L-1, H]`` in the head's dtype, ready for ``hidden @ W.T + b``."""
        return self.hidden[index.cpu()].to(device=device, dtype=self.head.weight.dtype)


def hidden_cache_directory(root: Path, teacher_fp: str, dataset_fp: str, dtype: str, vocab: int) -> Path:
    """Where the hidden-state cache for (teacher, dataset, storage dtype, vocabulary) lives under ``root``."""
    return root / f"{teacher_fp[:16]}-{dataset_fp[:16]}-hidden-{dtype}-v{vocab}"


def _rounding_kl(hidden: torch.Tensor, stored: torch.Tensor, head: Head, chunk_rows: int = 512) -> torch.Tensor:
    """KL(softmax(h W^T + b) || softmax(round(h) W^T + b)) per position [n], the cache's only error.

    In fp64 (the values are ~1e-7, below fp32's rounding of a log-softmax), ``chunk_rows`` rows at a
    time so that no ``[n, V]`` tensor exists.
    """
    weight = head.weight.double()
    bias = None if head.bias is None else head.bias.double()
    out = []
    for start in range(0, hidden.shape[0], chunk_rows):
        exact = F.log_softmax(F.linear(hidden[start : start + chunk_rows].double(), weight, bias), -1)
        rounded = F.log_softmax(F.linear(stored[start : start + chunk_rows].double(), weight, bias), -1)
        out.append((exact.exp() * (exact - rounded)).sum(-1))
    return torch.cat(out)


@torch.no_grad()
def build_hidden_cache(
    directory: Path, teacher: Teacher, input_ids: torch.Tensor, *, dataset_fingerprint: str, tokenizer_fingerprint: str,
    vocab: int, dtype: str = "float16", attention_mask: torch.Tensor | None = None, batch_size: int = 32, shard_rows: int = 4096,
) -> None:
    """Run the teacher's trunk over the blocks ``input_ids`` [N, L] (under ``attention_mask``, all
    ones if None) once and write the hidden-state cache at ``directory``."""
    head = lm_head(teacher.model, vocab)
    cpu_head = Head(head.weight.detach().cpu(), None if head.bias is None else head.bias.detach().cpu())
    with staged_directory(directory) as staging:
        head_tensors = {"weight": head.weight.detach().cpu().contiguous()}
        if head.bias is not None:
            head_tensors["bias"] = head.bias.detach().cpu().contiguous()
        save_file(head_tensors, str(staging / HEAD_FILE))
        shards, kl_sum, kl_max, positions = [], 0.0, 0.0, 0
        rows = input_ids.shape[0]
        for start in range(0, rows, shard_rows):
            stop = min(start + shard_rows, rows)
            chunks = []
            for lo in range(start, stop, batch_size):
                ids = input_ids[lo : min(lo + batch_size, stop)]
                mask = attention_mask[lo : min(lo + batch_size, stop)] if attention_mask is not None else torch.ones_like(ids)
                hidden = teacher_hidden(teacher.model, ids, mask).cpu()  # [b, L-1, H]
                stored = hidden.to(HIDDEN_DTYPES[dtype])
                kl = _rounding_kl(hidden.reshape(-1, hidden.shape[-1]), stored.reshape(-1, hidden.shape[-1]), cpu_head)
                kl_sum, kl_max, positions = kl_sum + float(kl.double().sum()), max(kl_max, float(kl.max())), positions + kl.numel()
                chunks.append(stored)
            store.write_shard(staging, shards, {"hidden": torch.cat(chunks)}, start, stop)
        hidden_size = int(head.weight.shape[1])
        manifest = store.manifest(
            "hidden", teacher, tokenizer_fingerprint, dataset_fingerprint, input_ids, attention_mask,
            vocab=vocab, hidden_size=hidden_size, dtypes={"hidden": dtype, "head": str(head.weight.dtype)},
            head={"file": HEAD_FILE, "sha256": file_sha256(staging / HEAD_FILE)},
            stats={
                "bytes_per_token": HIDDEN_DTYPES[dtype].itemsize * hidden_size,
                "dense_bytes_per_token": 4 * vocab,
                "reconstruction_kl": kl_sum / max(positions, 1),
                "max_kl": kl_max,
                "positions": positions,
            },
            shards=shards,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))


def load_hidden_cache(
    directory: Path, *, teacher_fingerprint: str, dataset_fingerprint: str, tokenizer_fingerprint: str, vocab: int,
    dtype: str = "float16", attention_fingerprint: str = store.ALL_ONES,
) -> HiddenSignals:
    """Load and verify the hidden-state cache at ``directory``.

    Raises:
        CacheError: missing or corrupt manifest, a newer format, another kind, built for another
            teacher, tokenizer, dataset, attention mask, dtype or vocabulary, or a file that fails
            its checksum; the message names the fix.
    """
    fields = {"teacher": "teacher.fingerprint", "tokenizer": "tokenizer.fingerprint", "dataset": "dataset.fingerprint",
              "attention mask": "attention", "vocabulary": "vocab", "hidden dtype": "dtypes.hidden", "head": "head"}
    built_for, shards, stats = store.read_manifest(directory, "hidden", fields)
    store.check_built_for(directory, {k: v for k, v in built_for.items() if k != "head"}, {
        "teacher": teacher_fingerprint, "tokenizer": tokenizer_fingerprint, "dataset": dataset_fingerprint,
        "attention mask": attention_fingerprint, "vocabulary": vocab, "hidden dtype": dtype})
    head_file = directory / HEAD_FILE
    if not head_file.is_file() or file_sha256(head_file) != built_for["head"].get("sha256"):
        raise CacheError(f"{head_file} is missing or corrupt (checksum mismatch): {store.fix_hint(directory)}.")
    try:
        head = load_file(str(head_file))
    except (SafetensorError, OSError) as error:
        raise CacheError(f"{head_file} cannot be read ({error}): {store.fix_hint(directory)}.") from None
    parts = store.read_shards(directory, shards, ("hidden",))
    return HiddenSignals(hidden=torch.cat(parts["hidden"]), head=Head(head["weight"], head.get("bias")), stats=stats)


def open_hidden_signals(who: str, teacher: Teacher, datamodule: Any, *, vocab: int, root: str | Path, dtype: str = "float16") -> HiddenSignals:
    """The hidden-state cache of ``datamodule``'s training split (under its attention mask), opened
    or built, with one log line of its statistics for ``who``."""
    from anydistill.data.tokenizers import tokenizer_fingerprint

    ids = datamodule.split("train")[0]
    attention = store.split_attention_mask(datamodule, "train")
    fingerprints = dict(dataset_fingerprint=datamodule.fingerprint("train"), tokenizer_fingerprint=tokenizer_fingerprint(datamodule.tokenizer))
    directory = hidden_cache_directory(Path(root), teacher.fingerprint(), fingerprints["dataset_fingerprint"], dtype, vocab)
    built = not directory.exists()
    if built:
        build_hidden_cache(directory, teacher, ids, vocab=vocab, dtype=dtype, attention_mask=attention, **fingerprints)
    signals = load_hidden_cache(directory, teacher_fingerprint=teacher.fingerprint(), vocab=vocab, dtype=dtype,
                                attention_fingerprint=store.attention_fingerprint(attention), **fingerprints)
    stats = signals.stats
    log.info("%s: hidden-state cache %s %s: %d bytes/token (dense logits: %d), KL(teacher || from the stored states) mean %.3g, max %.3g nats/token",
             who, directory, "built" if built else "loaded", stats["bytes_per_token"], stats["dense_bytes_per_token"],
             stats["reconstruction_kl"], stats["max_kl"])
    return signals
