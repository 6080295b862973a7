"""The plugin manager: the core's own plugin, then every entry point in the group "compkit".

A plugin that fails to import, or whose hook name is misspelled, is recorded as failed with its
error and left out; every other plugin keeps working. ``COMPKIT_LOAD_PLUGINS`` (comma-separated
entry-point names, empty for none) limits which installed plugins load.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import sys
from typing import Any

import pluggy

from compkit import hookspecs

GROUP = "compkit"
BUILTIN = "compkit"


@dataclasses.dataclass
class Plugin:
    """One loaded (or failed) plugin and what it registered."""

    name: str
    distribution: str
    version: str
    error: str | None = None
    competitions: list[str] = dataclasses.field(default_factory=list)
    models: list[str] = dataclasses.field(default_factory=list)
    losses: list[str] = dataclasses.field(default_factory=list)
    commands: list[str] = dataclasses.field(default_factory=list)


class Manager:
    """A pluggy PluginManager plus the record of each plugin by name."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, Plugin] = {}
        self._warned: set[str] = set()

    def add(self, name: str, module: Any, distribution: str, version: str) -> None:
        """Register ``module``; a misspelled hook unregisters it and records the error."""
        record = self.plugins.setdefault(name, Plugin(name, distribution, version))
        self.pm.register(module, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            self.pm.unregister(name=name)
            known = ", ".join(sorted(self.hook_names()))
            record.error = f"{error}; known hooks: {known}"

    def fail(self, name: str, distribution: str, version: str, error: BaseException) -> None:
        self.plugins[name] = Plugin(name, distribution, version, error=f"{type(error).__name__}: {error}")

    @staticmethod
    def hook_names() -> list[str]:
        return [name for name, obj in vars(hookspecs).items() if hasattr(obj, f"{GROUP}_spec")]

    def implementations(self, hook: str) -> list[Any]:
        """The implementations of ``hook``, in the order the plugins were added."""
        return list(getattr(self.pm.hook, hook).get_hookimpls())

    def run(self, impl: Any, **kwargs: Any) -> bool:
        """Call one implementation; an exception is recorded against its plugin, not raised.

        Implementations may accept fewer arguments than the spec (pluggy's rule).
        """
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as error:  # a broken plugin must not break the others
            record = self.plugins[impl.plugin_name]
            record.error = f"{type(error).__name__} in {impl.function.__name__}: {error}"
            return False
        return True

    def failed(self) -> list[Plugin]:
        return [plugin for plugin in self.plugins.values() if plugin.error]

    def warn_failed(self) -> None:
        """One warning per failed plugin, naming it, once per process (on stderr)."""
        for plugin in self.failed():
            if plugin.name not in self._warned:
                self._warned.add(plugin.name)
                print(f"warning: compkit plugin {plugin.name!r} ({plugin.distribution}) failed and is "
                      f"not loaded: {plugin.error}", file=sys.stderr)


def _allowed() -> set[str] | None:
    value = os.environ.get("COMPKIT_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    points = importlib.metadata.entry_points(group=GROUP)
    return sorted(points, key=lambda point: point.name)


@functools.cache
def manager() -> Manager:
    """The process-wide manager (plugins load once)."""
    return load()


def load() -> Manager:
    """Build a manager with the core's builtins and every allowed installed plugin."""
    from compkit import __version__, builtins

    manager = Manager()
    manager.add(BUILTIN, builtins, "compkit", __version__)
    allowed = _allowed()
    for point in _entry_points():
        if allowed is not None and point.name not in allowed:
            continue
        distribution = point.dist.name if point.dist else "?"
        version = point.dist.version if point.dist else "?"
        if point.name in manager.plugins:
            manager.fail(point.name, distribution, version,
                         ValueError(f"entry-point name {point.name!r} is already used by "
                                    f"{manager.plugins[point.name].distribution}"))
            continue
        try:
            module = point.load()
        except Exception as error:  # report by name, keep the others
            manager.fail(point.name, distribution, version, error)
            continue
        manager.add(point.name, module, distribution, version)
    return manager
