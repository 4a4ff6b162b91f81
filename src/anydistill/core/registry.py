"""Registries keyed by name, with a dotted import path as the escape hatch.

Built-in entries are declared as ``"module:attribute"`` strings in one table per family (see
`anydistill.registries`), so the registry is complete whatever was imported before; installed
packages add entries through an entry-point group; user code adds entries with
`Registry.register`, or names any object by its import path in a recipe.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
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
        entry_points: the entry-point group through which installed packages add entries
            (``anydistill.methods``...); read on first use, imported only when a name is used.
    """

    def __init__(self, kind: str, builtins: dict[str, str] | None = None, entry_points: str | None = None):
        self.kind = kind
        self._paths: dict[str, str] = dict(builtins or {})
        self._objects: dict[str, Any] = {}
        self._group = entry_points
        self._plugins: dict[str, importlib.metadata.EntryPoint] | None = None

    def plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Entries added by installed packages (name -> entry point); a built-in name wins."""
        if self._plugins is None:
            found = importlib.metadata.entry_points(group=self._group) if self._group else ()
            self._plugins = {ep.name: ep for ep in found if ep.name not in self._paths}
        return self._plugins

    def plugin_package(self, name: str) -> str | None:
        """The distribution that registers ``name`` through an entry point, if any."""
        entry = self.plugins().get(name)
        return getattr(entry.dist, "name", None) if entry is not None else None

    def saved_name(self, name: str) -> str:
        """How a run's config.yaml records ``name`` so that it loads again in a fresh process.

        Built-in and plugin names stay as they are (a plugin's name re-validates wherever the plugin
        is installed); an entry registered from Python with ``register`` exists only in the process
        that registered it, so it is saved as its import path when it has one.
        """
        if name not in self._objects or name in self._paths or name in self.plugins():
            return name
        obj = self._objects[name]
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
        if not module or module == "__main__" or "<" in qualname:
            return name  # defined in a script or a function: no import path a new process could follow
        return f"{module}:{qualname}"

    def builtin(self, name: str) -> bool:
        """Whether ``name`` is shipped with anydistill (not a plugin's or a user's entry)."""
        return name in self._paths

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering a user-defined entry under ``name``."""

        def add(obj: Any) -> Any:
            if name in self:
                raise ValueError(f"A {self.kind} named '{name}' is already registered.")
            self._objects[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove an entry added with ``register`` (shipped and plugin entries stay)."""
        if name in self._paths or name in self.plugins():
            raise ValueError(f"'{name}' is a shipped or plugin {self.kind}; only entries added with register() can be removed.")
        self._objects.pop(name, None)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted({*self._paths, *self._objects, *self.plugins()})

    def __contains__(self, name: str) -> bool:
        return name in self._paths or name in self._objects or name in self.plugins()

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
        if name in self.plugins():
            entry = self.plugins()[name]
            try:
                self._objects[name] = entry.load()
            except Exception as error:  # noqa: BLE001 - whatever the plugin raises on import, name the package
                package = self.plugin_package(name) or "its package"
                raise LookupError(
                    f"the {self.kind} '{name}' comes from the installed package '{package}', whose entry point "
                    f"'{entry.value}' fails to import ({type(error).__name__}: {error}); reinstall or fix '{package}', "
                    f"or uninstall it."
                ) from None
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
