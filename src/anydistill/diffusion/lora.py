"""LoRA adapters on a denoiser's linear and conv layers, through ``peft`` (Hu et al. 2022).

Few-step students are often a LoRA on the teacher (LCM-LoRA, Hyper-SD, Phased DMD's experts,
distribution-matching students of large models): the base stays the teacher's, frozen, and only
the low-rank updates ``W + (alpha / r) B A`` train. peft's low-level API injects them into any
``nn.Module``: here the `Denoiser`'s network, at every ``nn.Linear`` and ``nn.Conv2d`` (or the names
given), ``B`` zero-initialised so an adapted model starts as its base.

Adapters can be switched off (`set_adapters_enabled`: the base model's prediction, which a
distribution-matching method uses as the real score of the same network) and are saved and loaded
apart from the base (`save_adapter` / `load_adapter`: ``adapter.safetensors`` + ``adapter.json``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_FILE, CONFIG_FILE = "adapter.safetensors", "adapter.json"


def lora_targets(net: nn.Module) -> list[str]:
    """The names of every ``nn.Linear`` and ``nn.Conv2d`` of ``net`` (what LoRA adapts by default)."""
    return [name for name, module in net.named_modules() if isinstance(module, nn.Linear | nn.Conv2d)]


def add_lora(model: nn.Module, rank: int = 8, alpha: float | None = None, targets: list[str] | None = None) -> nn.Module:
    """Inject LoRA adapters of ``rank`` (scale ``alpha / rank``, default alpha = rank) into
    ``model.net`` at ``targets`` (default `lora_targets`); freeze everything else. Returns ``model``.

    Raises:
        ValueError: a rank < 1, or target names the network does not have.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_targets(model.net) if targets is None else list(targets)
    names = {name for name, _ in model.net.named_modules()}
    unknown = [t for t in targets if t not in names]
    if rank < 1 or unknown or not targets:
        raise ValueError(f"LoRA needs a rank >= 1 and layers of the network: rank {rank}, "
                         f"{'unknown layers ' + ', '.join(unknown) if unknown else 'layers ' + str(len(targets))}.")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=targets, lora_dropout=0.0)
    model.requires_grad_(False)
    inject_adapter_in_model(config, model.net)  # marks only the lora_ parameters trainable
    model.lora = {"rank": rank, "alpha": config.lora_alpha, "targets": targets}
    return model


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter of ``model`` on or off (off: the base model's predictions)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only (``lora_A`` / ``lora_B`` of each layer)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model.net).items()}


def save_adapter(model: nn.Module, directory: Path) -> Path:
    """Write the adapters apart from the base: ``adapter.safetensors`` and ``adapter.json`` (rank,
    alpha, target layers). Returns the weights' path."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(directory / ADAPTER_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(model.lora, indent=2))
    return directory / ADAPTER_FILE


def load_adapter(model: nn.Module, directory: Path) -> nn.Module:
    """Put the adapters saved in ``directory`` on a base ``model`` (the teacher it was trained on).

    Raises:
        ValueError: the folder holds no adapter, or one for other layers.
    """
    from peft import set_peft_model_state_dict

    if not (directory / ADAPTER_FILE).is_file() or not (directory / CONFIG_FILE).is_file():
        raise ValueError(f"{directory} holds no LoRA adapter ({ADAPTER_FILE} and {CONFIG_FILE}): point at a run's export of a LoRA student.")
    config = json.loads((directory / CONFIG_FILE).read_text())
    add_lora(model, config["rank"], config["alpha"], config["targets"])
    result = set_peft_model_state_dict(model.net, load_file(str(directory / ADAPTER_FILE)))
    missing = [k for k in getattr(result, "unexpected_keys", [])]
    if missing:
        raise ValueError(f"the adapter in {directory} has layers this model lacks ({missing[0]}, ...): load it on the base it was trained on.")
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain copy of a LoRA model, each adapter merged into its layer's weight (``W + (alpha/r) B A``):
    the architecture the recipe builds, so its ``model.json`` rebuilds it without peft."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    plain = copy.deepcopy(model)
    for name, module in list(plain.net.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(plain.net.get_submodule(parent) if parent else plain.net, child, module.get_base_layer())
    vars(plain).pop("lora", None)
    return plain.requires_grad_(True)
