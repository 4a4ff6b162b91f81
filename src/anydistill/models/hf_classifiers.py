"""Local Hugging Face classifier checkpoints (``save_pretrained`` folders) as teachers or students.

``hf-sequence-classifier`` and ``hf-image-classifier`` load ``AutoModelForSequenceClassification``
/ ``AutoModelForImageClassification`` with ``local_files_only=True`` (nothing is downloaded) and
wrap them so that ``model(x)`` returns logits [B, C], as every classifier method expects. The
Hugging Face model is the wrapper's ``hf`` attribute: feature taps name its modules with the prefix
``hf.``, e.g. ``hf.bert.encoder.layer.1``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from anydistill.core.errors import first_line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Which builder a folder's architecture belongs to, by the suffix of its class name.
FAMILY_OF_SUFFIX = {
    "ForSequenceClassification": "hf-sequence-classifier",
    "ForImageClassification": "hf-image-classifier",
    "ForCausalLM": "hf-causal-lm",
    "LMHeadModel": "hf-causal-lm",
    "ForConditionalGeneration": "a sequence-to-sequence model (not supported for classification)",
}


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Without transformers' loading/writing progress bars: on stderr they would bury the one-line
    errors and the run's own output (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def read_config(path: str, builder: str) -> dict[str, Any]:
    """The ``config.json`` of a ``save_pretrained`` folder.

    Raises:
        ValueError: no such folder, no config.json (e.g. a diffusers pipeline or a bare weights file).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{builder}.path: no such folder '{path}'; point path at a save_pretrained folder.")
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"{builder}.path: '{path}' has no config.json; point path at a save_pretrained folder.")
    return json.loads(config.read_text())


def check_architecture(config: dict[str, Any], path: str, builder: str) -> None:
    """Refuse a folder whose saved architecture belongs to another builder (a causal LM given to
    hf-sequence-classifier...). A folder without a head (``BertModel``, ``...ForMaskedLM``) is
    accepted: its classification head starts untrained."""
    for name in config.get("architectures") or []:
        for suffix, owner in FAMILY_OF_SUFFIX.items():
            if name.endswith(suffix) and owner != builder:
                use = f"use {owner}" if owner.startswith("hf-") else f"it is {owner}"
                raise ValueError(f"{builder}.path: '{path}' holds a {name}, not a model for {builder}; {use}.")


def find_layers(model: nn.Module, count: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList of the ``count`` transformer blocks (``bert.encoder.layer``, ``distilbert.transformer.layer``...)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise ValueError(f"{model.__class__.__name__} has no list of {count} layers to select from; drop keep_layers.")


def keep_only_layers(model: nn.Module, keep_layers: list[int], builder: str) -> None:
    """Keep the blocks ``keep_layers`` (in that order) and update the config (DistilBERT-style
    initialisation of a shallower student from its teacher's layers)."""
    total = model.config.num_hidden_layers
    problems = []
    if not keep_layers:
        problems.append("is empty")
    if len(set(keep_layers)) != len(keep_layers):
        problems.append(f"repeats a layer ({keep_layers})")
    outside = [i for i in keep_layers if not 0 <= i < total]
    if outside:
        problems.append(f"has {outside} outside the valid range 0..{total - 1}")
    if problems:
        raise ValueError(f"{builder}.keep_layers {' and '.join(problems)}; give distinct layer indices in 0..{total - 1}.")
    _, layers = find_layers(model, total)
    kept = [layers[i] for i in keep_layers]
    for new_index, layer in enumerate(kept):  # attention modules that record their index (caches) follow the new order
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    layers._modules.clear()
    for i, layer in enumerate(kept):
        layers.append(layer)
    model.config.num_hidden_layers = len(kept)


class HFClassifier(nn.Module):
    """``model(x) -> logits [B, C]`` over a Hugging Face classifier kept as ``self.hf``.

    Args:
        hf: the ``...ForSequenceClassification`` / ``...ForImageClassification`` model.
        inputs: "input_ids" (x int64 [B, L], attention mask ``x != pad_id``) or "pixel_values"
            (x float [B, C, H, W]).
        pad_id: the padding token id (text only).
        source: the folder it was loaded from (its tokenizer or image processor is saved with it).
    """

    def __init__(self, hf: nn.Module, inputs: Literal["input_ids", "pixel_values"], pad_id: int | None = None, source: str = ""):
        super().__init__()
        self.hf, self.inputs, self.pad_id, self.source = hf, inputs, pad_id, source
        # save_pretrained writes the Hugging Face model's own names (no "hf." prefix) into
        # model.safetensors: accept them too, so a teacher.checkpoint or a resumed run loads either form.
        self.register_load_state_dict_pre_hook(self._accept_unprefixed_keys)

    @staticmethod
    def _accept_unprefixed_keys(module, state_dict, prefix, *_args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "hf.")]:
            state_dict[prefix + "hf." + key[len(prefix):]] = state_dict.pop(key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] (float32) for token ids [B, L] or images [B, C, H, W]."""
        if self.inputs == "input_ids":
            ids = x.long()  # the loader's dry run feeds float zeros
            return self.hf(input_ids=ids, attention_mask=(ids != self.pad_id).long()).logits.float()
        return self.hf(pixel_values=x.to(self.hf.dtype)).logits.float()

    def save_pretrained(self, directory: str | Path) -> None:
        """The ecosystem's format: ``config.json`` + ``model.safetensors`` that ``AutoModelFor...
        .from_pretrained(directory)`` loads, plus the source folder's tokenizer or image processor."""
        with quiet_progress():
            self.hf.save_pretrained(str(directory))
        if not self.source:
            return
        from transformers import AutoImageProcessor, AutoTokenizer

        loader = AutoTokenizer if self.inputs == "input_ids" else AutoImageProcessor
        try:
            loader.from_pretrained(self.source, local_files_only=True).save_pretrained(str(directory))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the source folder had none: the weights and config are still complete


def _load(auto: Any, path: str, builder: str, dtype: str) -> nn.Module:
    try:
        with quiet_progress():
            return auto.from_pretrained(path, local_files_only=True, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as error:
        first = first_line(error)
        raise ValueError(f"{builder}.path: '{path}' does not load as {auto.__name__}: {first}") from None


def _check_labels(model: nn.Module, num_classes: int, path: str, builder: str) -> None:
    if model.config.num_labels != num_classes:
        raise ValueError(
            f"{builder}.path: '{path}' has num_labels={model.config.num_labels} in its config.json but the data has "
            f"{num_classes} classes; give a checkpoint with a {num_classes}-way head (config.num_labels={num_classes})."
        )


def hf_sequence_classifier(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    path: str,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    keep_layers: list[int] | None = None,
    pad_id: int | None = None,
) -> HFClassifier:
    """A local ``AutoModelForSequenceClassification`` folder: token ids [B, L] -> logits [B, C].

    Args:
        path: a ``save_pretrained`` folder; its ``num_labels`` must equal the data's classes.
        dtype: the weights' dtype.
        keep_layers: keep only these encoder blocks (e.g. [0, 2, 4] of a 6-layer teacher's folder
            to initialise a 3-layer student).
        pad_id: the padding token id for the attention mask (default: the config's pad_token_id).
    Taps: ``hf.<base>.encoder.layer.<i>`` (``hf.bert.encoder.layer.1``...).
    """
    from transformers import AutoModelForSequenceClassification

    builder = "hf-sequence-classifier"
    check_architecture(read_config(path, builder), path, builder)
    model = _load(AutoModelForSequenceClassification, path, builder, dtype)
    _check_labels(model, num_classes, path, builder)
    if keep_layers is not None:
        keep_only_layers(model, keep_layers, builder)
    pad = pad_id if pad_id is not None else model.config.pad_token_id
    if pad is None:
        raise ValueError(f"{builder}: '{path}' has no pad_token_id in its config.json; give pad_id (the tokenizer's pad_token_id).")
    longest = getattr(model.config, "max_position_embeddings", None)
    if input_shape and longest is not None and input_shape[-1] > longest:
        raise ValueError(f"{builder}: the texts are {input_shape[-1]} tokens but '{path}' takes at most {longest}; set data.max_length <= {longest}.")
    return HFClassifier(model, "input_ids", int(pad), source=path)


def hf_image_classifier(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    path: str,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
) -> HFClassifier:
    """A local ``AutoModelForImageClassification`` folder: images [B, C, H, W] -> logits [B, C].

    The data must match the checkpoint's ``num_channels`` and ``image_size`` (image-folder's
    ``mode`` and ``size``). Taps: ``hf.<base>.encoder.layer.<i>`` for ViT-like models.
    """
    from transformers import AutoModelForImageClassification

    builder = "hf-image-classifier"
    check_architecture(read_config(path, builder), path, builder)
    model = _load(AutoModelForImageClassification, path, builder, dtype)
    _check_labels(model, num_classes, path, builder)
    channels, size = getattr(model.config, "num_channels", None), getattr(model.config, "image_size", None)
    if channels is not None and len(input_shape) == 3 and input_shape[0] != channels:
        raise ValueError(f"{builder}: '{path}' takes {channels}-channel images but the data has {input_shape[0]}; "
                         f"set data.mode to {'rgb' if channels == 3 else 'grayscale'}.")
    if isinstance(size, int) and len(input_shape) == 3 and tuple(input_shape[1:]) != (size, size):
        raise ValueError(f"{builder}: '{path}' takes {size}x{size} images but the data's are {input_shape[1]}x{input_shape[2]}; set data.size: {size}.")
    return HFClassifier(model, "pixel_values", source=path)
