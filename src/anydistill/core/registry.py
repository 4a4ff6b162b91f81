"""Registries keyed by name, with a dotted import path as the escape hatch.

Built-in entries are declared as ``"module:attribute"`` strings in one table (see
`anydistill.catalog`), so the registry is complete whatever was imported before; user code adds
entries with `Registry.register`, or names any object by its import path in a recipe.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable


def import_object(path: str) -> Any:
    """Import ``"package.module:attr"`` or ``"package.module.attr"``.

    Raises:
        LookupError: the module or attribute does not exist (message names which).
    """
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise LookupError(f"cannot import module '{module_name}' ({error})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise LookupError(f"module '{module_name}' has no attribute '{attr}'") from None


class Registry:
    """A name -> object mapping for one kind of component (methods, models, data).

    Args:
        kind: what the entries are, used in error messages ("method", "model", ...).
        builtins: name -> ``"module:attr"`` of the entries shipped with anydistill; imported lazily.
    """

    def __init__(self, kind: str, builtins: dict[str, str] | None = None):
        self.kind = kind
        self._paths: dict[str, str] = dict(builtins or {})
        self._objects: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering a user-defined entry under ``name``."""

        def add(obj: Any) -> Any:
            if name in self:
                raise ValueError(f"A {self.kind} named '{name}' is already registered.")
            self._objects[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted({*self._paths, *self._objects})

    def __contains__(self, name: str) -> bool:
        return name in self._paths or name in self._objects

    def get(self, name: str) -> Any:
        """The entry registered as ``name``, or the object at import path ``name``.

        Raises:
            LookupError: one line listing the registered names and the closest match.
        """
        if name in self._objects:
            return self._objects[name]
        if name in self._paths:
            self._objects[name] = import_object(self._paths[name])
            return self._objects[name]
        if "." in name or ":" in name:
            return import_object(name)
        raise LookupError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """'Unknown method 'kdd'; did you mean 'kd'? Registered: ...' (no trailing fix-up needed)."""
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        return (
            f"Unknown {self.kind} '{name}'{hint} Registered {self.kind}s: {', '.join(self.names())} "
            f"(or give an import path such as 'my_package.module:Name')."
        )
