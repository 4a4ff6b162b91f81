"""Export a trained network as ``model.safetensors`` plus the spec that rebuilds it (``model.json``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from anydistill.core.rundir import write_atomic


def export_model(model: nn.Module, component_spec: dict[str, Any], directory: Path) -> Path:
    """Save ``model``'s state dict as safetensors and ``component_spec`` as model.json; returns the weights' path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.safetensors"
    partial = directory / ".model.safetensors.partial"  # renamed into place: never a half-written export
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(partial))
    os.replace(partial, path)
    write_atomic(directory / "model.json", json.dumps(component_spec, indent=2))
    return path
