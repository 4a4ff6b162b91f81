"""Feature taps: intermediate outputs captured by forward hooks on modules named by path.

Users never edit their models: ``"features.3"`` or ``"layer3.1"`` names a submodule exactly as
``model.get_submodule`` does.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``.

    Raises:
        LookupError: one line naming the closest existing paths.
    """
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LookupError(
            f"{model.__class__.__name__} has no module '{path}'.{hint} Its modules: {', '.join(names[:30])}"
        ) from None


@contextlib.contextmanager
def capture_features(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the outputs of the modules at ``paths`` during forwards inside the ``with`` block.

    Yields:
        a dict filled as the forward runs: path -> that module's output tensor (gradients kept).
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for path in paths:
            def hook(_module: nn.Module, _inputs: object, output: torch.Tensor, path: str = path) -> None:
                captured[path] = output

            handles.append(find_module(model, path).register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
