"""Causal language models from a local ``save_pretrained`` folder (the user's own checkpoints).

``hf-causal-lm`` loads the folder with ``AutoModelForCausalLM.from_pretrained(path,
local_files_only=True)``: nothing is downloaded. With ``keep_layers`` the model keeps only those
decoder layers (layer dropping as in DistilBERT and Minitron: a student initialised from its
teacher's weights, shallower). The tokenizer and chat template are read from the same folder by the
data module (``data.tokenizer: PATH``), and an export writes them beside the student.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError
from torch import nn

from anydistill.core.recipe import NonNegativeInt

DTYPES = ("float32", "bfloat16", "float16")


def causal_lm_class_names() -> set[str]:
    """Every class name ``AutoModelForCausalLM`` can build (``LlamaForCausalLM``, ``GPT2LMHeadModel``...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


def folder_problem(path: str) -> str | None:
    """Why ``path`` is not a local causal-LM folder, in one line naming the fix, or None.

    Reads only ``config.json`` (no weights): cheap enough for recipe validation.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        return (f"must be a folder written by save_pretrained (config.json beside the weights); '{path}' {what}. "
                "Point it at the model's local folder (nothing is downloaded)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        return f"must hold a readable config.json; {folder / 'config.json'} is not valid JSON ({error.__class__.__name__})."
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = config.get("architectures") or []
    if architectures:
        if not set(architectures) & causal_lm_class_names():
            return (f"must be a causal language model; {folder / 'config.json'} names {', '.join(architectures)}. "
                    "Use hf-sequence-classifier for classifiers, or a folder of a *ForCausalLM model")
    elif config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return (f"must be a causal language model; model_type '{config.get('model_type')}' of {folder / 'config.json'} has no "
                "causal-LM class in transformers. Use hf-sequence-classifier for classifiers")
    return None


def _check_folder(path: str) -> str:
    problem = folder_problem(path)
    if problem:
        raise PydanticCustomError("causal_lm_folder", problem)
    return path


def _check_layers(layers: list[int] | None) -> list[int] | None:
    if layers is None:
        return None
    if not layers:
        raise PydanticCustomError("keep_layers", "must list at least one layer index (e.g. [0, 2]), or be omitted to keep every layer")
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise PydanticCustomError("keep_layers", f"must name each layer once; {repeated} are repeated")
    return layers


CausalLMFolder = Annotated[str, AfterValidator(_check_folder)]
LayerIndices = Annotated[list[NonNegativeInt], AfterValidator(_check_layers)]


def decoder_layers(model: nn.Module, num_layers: int) -> tuple[nn.Module, str]:
    """The ``nn.ModuleList`` of the decoder blocks (``model.layers`` for Llama, ``transformer.h`` for
    GPT-2...): the first ModuleList of ``num_layers`` entries, in module order, and its path."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module, name
    raise ValueError(f"hf-causal-lm found no list of {num_layers} decoder layers in {type(model).__name__}; "
                     "keep_layers cannot be used with this architecture.")


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep the decoder layers ``keep`` (in that order) of a transformers causal LM, in place.

    The config's layer count (and per-layer lists such as ``layer_types``) follow, and every
    ``layer_idx`` attribute inside the kept layers is renumbered to the layer's new position: the KV
    cache indexes its entries by it, so generation with a cache would otherwise read past its end.
    """
    config = model.config
    total = config.num_hidden_layers
    layers, path = decoder_layers(model, total)
    outside = [i for i in keep if not 0 <= i < total]
    if outside:
        raise ValueError(f"The 'keep_layers' parameter of hf-causal-lm must hold layer indices in 0..{total - 1} "
                         f"(the model has {total} decoder layers). Got {keep}.")
    kept = nn.ModuleList([layers[i] for i in keep])
    for position, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    setattr(parent, path.rpartition(".")[2], kept)
    for name, value in list(vars(config).items()):  # per-layer settings (layer_types, sliding windows...)
        if isinstance(value, list) and len(value) == total and name != "architectures":
            setattr(config, name, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
    return model


def hf_causal_lm(
    input_shape: Any = None,
    num_classes: Any = None,
    *,
    path: CausalLMFolder,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    attn_implementation: Literal["eager", "sdpa"] | None = None,
    keep_layers: LayerIndices | None = None,
    init_from: Literal["pretrained", "random"] = "pretrained",
):
    """A causal LM from the local folder ``path`` (``config.json`` + weights, as ``save_pretrained`` writes).

    Maps ``input_ids`` [B, L] to an output whose ``logits`` are [B, L, V].

    Args:
        input_shape, num_classes: injected by the engine for classifiers; ignored.
        path: the model folder; never downloaded (``local_files_only``).
        dtype: the weights' dtype.
        attn_implementation: transformers' attention kernel (None: its default).
        keep_layers: decoder layers to keep, e.g. ``[0, 2]`` of a 4-layer teacher (None: all).
        init_from: ``pretrained`` weights, or ``random`` (the folder's architecture, freshly initialised).

    Raises:
        ValueError: the folder is not a causal LM, or ``keep_layers`` names a layer it does not have.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    problem = folder_problem(path)
    if problem:  # validated already from a recipe; direct Python callers get the same line
        raise ValueError(f"The 'path' parameter of hf-causal-lm {problem}.")
    if keep_layers is not None:
        _check_layers(list(keep_layers))
    options = {"dtype": getattr(torch, dtype), **({"attn_implementation": attn_implementation} if attn_implementation else {})}
    hf_logging.disable_progress_bar()  # a "Loading weights" bar per build would interleave with the CLI's output
    if init_from == "pretrained":
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **options)
    else:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_config(config, **options)
    if keep_layers is not None:
        drop_layers(model, list(keep_layers))
    # from_pretrained returns eval mode; a student trains (dropout as configured), and the
    # engine puts a teacher in eval mode itself.
    return model.train()
