"""The plugin manager: the core's own plugin, then every entry point in the group "compkit".

A plugin that fails to import (``sys.exit`` and a ``KeyboardInterrupt`` it raises included), whose
hook name is misspelled, or whose hook arguments do not match the spec is recorded as failed with
its error and left out; every other plugin keeps working. ``COMPKIT_LOAD_PLUGINS``
(comma-separated entry-point names, empty for none) limits which installed plugins load. A plugin
import slower than ``COMPKIT_SLOW_IMPORT_S`` seconds (default ``SLOW_IMPORT_S``) is warned about,
since every command, ``--help`` included, pays for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy

from compkit import console, hookspecs

if TYPE_CHECKING:
    import click

GROUP = "compkit"
BUILTIN = "compkit"
SLOW_IMPORT_S = 1.0  # a plugin import slower than this (env COMPKIT_SLOW_IMPORT_S) is warned about
_slow_warned: set[str] = set()


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
    optimizers: list[str] = dataclasses.field(default_factory=list)
    tasks: list[str] = dataclasses.field(default_factory=list)
    commands: list[str] = dataclasses.field(default_factory=list)

    def who(self) -> str:
        """The plugin as messages name it: entry point and distribution."""
        return "the compkit core" if self.name == BUILTIN else f"{self.name} ({self.distribution})"


def describe(error: BaseException, where: str = "") -> str:
    """``Type[ in where]: message``, saying what a bare SystemExit or KeyboardInterrupt means."""
    head = type(error).__name__ + (f" in {where}" if where else "")
    if isinstance(error, SystemExit):
        return f"{head}: the plugin called sys.exit({error.code!r})"
    if isinstance(error, KeyboardInterrupt):
        return f"{head}: raised by the plugin's own code (not Ctrl-C)"
    text = " ".join(str(error).split())
    return f"{head}: {text}" if text else head


@contextlib.contextmanager
def _sigint_watch() -> Iterator[list[int]]:
    """Note each real SIGINT (Ctrl-C) that arrives inside; the previous handler still acts on it."""
    arrived: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield arrived  # no Python handler here, so a KeyboardInterrupt can only come from code
        return

    def handler(signum: int, frame: Any) -> None:
        arrived.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield arrived
    finally:
        signal.signal(signal.SIGINT, previous)


def call(function: Callable[..., Any], **kwargs: Any) -> tuple[Any, BaseException | None]:
    """``function(**kwargs)`` for plugin code: ``(result, None)``, or ``(None, error)`` for what it raised.

    ``SystemExit`` and ``KeyboardInterrupt`` count as the plugin's errors too, so a plugin that
    calls ``sys.exit`` or raises ``KeyboardInterrupt`` itself (at import or in a hook) fails alone
    instead of ending the CLI. A real Ctrl-C (SIGINT) that arrives meanwhile is still raised: the
    user asked to stop, and a long hook must stay interruptible.
    """
    with _sigint_watch() as sigints:
        try:
            return function(**kwargs), None
        except KeyboardInterrupt as error:
            if sigints:
                raise
            return None, error
        except (Exception, SystemExit) as error:  # a broken plugin must not break the others
            return None, error


class Manager:
    """A pluggy PluginManager plus the record of each plugin by name."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, Plugin] = {}
        self._warned: set[str] = set()

    def add(self, name: str, module: Any, distribution: str, version: str) -> None:
        """Register ``module``; a misspelled hook or mismatched arguments leave it out, recorded."""
        record = self.plugins.setdefault(name, Plugin(name, distribution, version))
        try:
            self.pm.register(module, name=name)  # validates each hookimpl's arguments against its spec
        except Exception as error:
            if self.pm.get_plugin(name) is module:
                self.pm.unregister(name=name)
            record.error = self._invalid(error)
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            self.pm.unregister(name=name)
            known = ", ".join(sorted(self.hook_names()))
            record.error = f"{error}; known hooks: {known}"

    def _invalid(self, error: Exception) -> str:
        """What pluggy's refusal to register says, on one line, with the spec's arguments to use."""
        if not isinstance(error, pluggy.PluginValidationError):
            return describe(error)
        text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        hook = re.search(r"for hook '(\w+)'", str(error))
        caller = getattr(self.pm.hook, hook.group(1), None) if hook else None
        if caller is not None and caller.spec is not None:
            text += (f"; the spec is {caller.name}({', '.join(caller.spec.argnames)}): "
                     "rename the hook's arguments to match")
        return text

    def fail(self, name: str, distribution: str, version: str, error: BaseException) -> None:
        """Record a plugin that could not be imported."""
        self.plugins[name] = Plugin(name, distribution, version,
                                    error=f"{describe(error)}; it is not loaded (fix it, or pip uninstall {distribution})")

    def note(self, name: str, message: str) -> None:
        """Record an error against plugin ``name``, after any it already has."""
        record = self.plugins[name]
        if not record.error:
            record.error = message
        elif message not in record.error:
            record.error = f"{record.error}; {message}"

    @staticmethod
    def hook_names() -> list[str]:
        return [name for name, obj in vars(hookspecs).items() if hasattr(obj, f"{GROUP}_spec")]

    def implementations(self, hook: str) -> list[Any]:
        """The implementations of ``hook``, in the order the plugins were added."""
        return list(getattr(self.pm.hook, hook).get_hookimpls())

    def run(self, impl: Any, **kwargs: Any) -> bool:
        """Call one implementation; what it raises is recorded against its plugin, not raised.

        That includes ``SystemExit`` and a ``KeyboardInterrupt`` it raises itself; a real Ctrl-C
        still interrupts (see ``call``). Implementations may accept fewer arguments than the spec
        (pluggy's rule).
        """
        _, error = call(impl.function, **{name: kwargs[name] for name in impl.argnames})
        if error is not None:
            self.note(impl.plugin_name, describe(error, impl.function.__name__))
            return False
        return True

    def add_commands(self, group: click.Group) -> None:
        """Let each plugin add commands to ``group``; replacing or removing one is refused and recorded."""
        for impl in self.implementations("register_commands"):
            before = dict(group.commands)
            self.run(impl, cli=group)
            for name, command in before.items():
                if group.commands.get(name) is not command:
                    verb = "replace" if name in group.commands else "remove"
                    group.commands[name] = command
                    owner = next((p for p in self.plugins.values() if name in p.commands), None)
                    self.note(impl.plugin_name,
                              f"register_commands tried to {verb} the command {name!r} of "
                              f"{owner.who() if owner else 'the compkit core'}; refused, that one "
                              "stays: give the plugin's command a new name")
            self.plugins[impl.plugin_name].commands.extend(sorted(set(group.commands) - set(before)))

    def failed(self) -> list[Plugin]:
        return [plugin for plugin in self.plugins.values() if plugin.error]

    def warn_failed(self) -> None:
        """One warning per failed plugin, naming it, once per process (on stderr)."""
        for plugin in self.failed():
            if plugin.name not in self._warned:
                self._warned.add(plugin.name)
                console.echo(f"warning: compkit plugin {plugin.name!r} ({plugin.distribution}) failed: {plugin.error}",
                             err=True)


def slow_import_s() -> float:
    """The slow-import threshold in seconds: ``COMPKIT_SLOW_IMPORT_S``, else ``SLOW_IMPORT_S``."""
    try:
        return float(os.environ.get("COMPKIT_SLOW_IMPORT_S", SLOW_IMPORT_S))
    except ValueError:
        return SLOW_IMPORT_S


def _warn_if_slow(name: str, distribution: str, seconds: float) -> None:
    """One warning per slow plugin and process (on stderr), with the time its import cost."""
    if seconds > slow_import_s() and name not in _slow_warned:
        _slow_warned.add(name)
        console.echo(f"warning: compkit plugin {name!r} ({distribution}) took {seconds:.1f} s to import, which every "
                     "compkit command pays (--help too): import heavy modules such as torch inside its functions, "
                     "or leave it out with COMPKIT_LOAD_PLUGINS", err=True)


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
        start = time.perf_counter()
        module, error = call(point.load)  # report by name, keep the others
        _warn_if_slow(point.name, distribution, time.perf_counter() - start)
        if error is not None:
            manager.fail(point.name, distribution, version, error)
            continue
        manager.add(point.name, module, distribution, version)
    return manager
