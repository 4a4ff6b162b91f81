"""The teacher's continuations of every training prompt, generated once and stored: `seq-kd` with
``decoding: beam`` trains on them (Kim & Rush decode the training set once with beam search).

Layout (conventions of :mod:`anydistill.core.cache`: staged then renamed, checksummed)::

    <root>/<teacher fp>-<dataset fp>-<decoding fp>/
        manifest.json               teacher, tokenizer and dataset fingerprints, decoding settings,
                                    prompt and new-token lengths, the file's checksum
        generations.safetensors     "input_ids" [N, P + new] (int32), "completion_mask" [N, P + new] (uint8)

Row r holds block r of the split: its first P tokens (the prompt) and the teacher's continuation,
padded after the first ``<eos>``; the mask is True on the continuation up to and including that
``<eos>`` (as `lm.common.generate` returns it). A store built for another teacher, tokenizer, data
or decoding, or whose file fails its checksum, is refused with a `CacheError` naming the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from anydistill import __version__
from anydistill.core.cache import file_sha256, staged_directory
from anydistill.core.errors import CacheError
from anydistill.core.teacher import Teacher
from anydistill.lm.common import teacher_generate

FORMAT_VERSION = 1
FILE = "generations.safetensors"


def generation_directory(root: Path, teacher_fp: str, dataset_fp: str, settings: dict) -> Path:
    """Where the generations for (teacher, dataset, decoding settings) live under ``root``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return root / f"{teacher_fp[:16]}-{dataset_fp[:16]}-{digest[:8]}"


def open_or_build_generations(
    root: Path, teacher: Teacher, prompts: torch.Tensor, new_tokens: int, *, dataset_fingerprint: str,
    tokenizer_fingerprint: str, num_beams: int, eos_token_id: int, pad_token_id: int, batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, Path, bool]:
    """Load the teacher's beam-search continuations of ``prompts`` [N, P], generating them first if absent.

    Returns:
        ``(input_ids [N, P + new_tokens], completion_mask [N, P + new_tokens] bool, directory, built now)``.

    Raises:
        CacheError: the store exists but is corrupt or was built for something else (the message names the fix).
    """
    settings = {"decoding": "beam", "num_beams": num_beams, "prompt_tokens": int(prompts.shape[1]), "new_tokens": new_tokens,
                "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    expected = {"teacher": teacher.fingerprint(), "tokenizer": tokenizer_fingerprint, "dataset": dataset_fingerprint,
                "rows": int(prompts.shape[0]), **settings}
    directory = generation_directory(root, expected["teacher"], dataset_fingerprint, settings)
    built = not directory.exists()
    if built:
        with staged_directory(directory) as staging:
            ids, mask = _generate_all(teacher, prompts, new_tokens, num_beams, eos_token_id, pad_token_id, batch_size)
            save_file({"input_ids": ids.to(torch.int32), "completion_mask": mask.to(torch.uint8)}, str(staging / FILE))
            manifest = {"format": FORMAT_VERSION, "kind": "generations", "anydistill": __version__, "teacher_name": teacher.name,
                        **expected, "sha256": file_sha256(staging / FILE)}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    ids, mask = _load(directory, expected)
    return ids, mask, directory, built


def _generate_all(teacher: Teacher, prompts: torch.Tensor, new_tokens: int, num_beams: int, eos: int, pad: int,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunks_ids, chunks_mask = [], []
    with tqdm(total=prompts.shape[0], desc=f"seq-kd: beam search ({num_beams}) with {teacher.name}", unit="prompt",
              leave=False, disable=None) as progress:
        for start in range(0, prompts.shape[0], batch_size):
            batch = prompts[start : start + batch_size]
            ids, mask = teacher_generate(teacher, batch, new_tokens, do_sample=False, num_beams=num_beams, eos_token_id=eos, pad_token_id=pad)
            chunks_ids.append(ids.cpu())
            chunks_mask.append(mask.cpu())
            progress.update(batch.shape[0])
    return torch.cat(chunks_ids), torch.cat(chunks_mask)


def _load(directory: Path, expected: dict) -> tuple[torch.Tensor, torch.Tensor]:
    fix = f"delete {directory} to generate it again from the teacher"
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        checksum = manifest["sha256"]
    except FileNotFoundError:
        raise CacheError(f"The generation store {directory} has no manifest.json (incomplete or not a store): {fix}.") from None
    except (ValueError, KeyError, TypeError):
        raise CacheError(f"The manifest of the generation store {directory} is corrupt: {fix}.") from None
    if manifest.get("format") != FORMAT_VERSION or manifest.get("kind") != "generations":
        raise CacheError(f"The generation store {directory} has format {manifest.get('format')!r} "
                         f"(this build reads {FORMAT_VERSION}): {fix}.")
    for key, want in expected.items():
        if manifest.get(key) != want:
            raise CacheError(f"The generation store {directory} was built for another {key} "
                             f"({str(manifest.get(key))[:16]} != {str(want)[:16]}): {fix}.")
    file = directory / FILE
    if not file.is_file() or file_sha256(file) != checksum:
        raise CacheError(f"{file} is missing or corrupt (checksum mismatch): {fix}.")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise CacheError(f"{file} cannot be read ({error}): {fix}.") from None
    return tensors["input_ids"].long(), tensors["completion_mask"].bool()
