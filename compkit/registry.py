"""Names -> competitions, model, loss and optimizer factories, gathered from every plugin.

A name two plugins register is refused to both, recorded against both naming both (their other
registrations keep working). Unknown names list what exists.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from compkit import plugins
from compkit.errors import CompkitError
from compkit.plugins import Manager

if TYPE_CHECKING:
    import torch.nn

    from compkit.competition import Competition
    from compkit.tasks import Task

PLURAL = {"competition": "competitions", "model": "models", "loss": "losses", "optimizer": "optimizers",
          "task": "tasks"}
INSTALL_HINT = ("Install one with: pip install compkit-<name> (first-party: siim, plant-pathology, cifar10, hotdog, "
                "digits, covid-cxr, isbi, voc)")


class Registry:
    """What every loaded plugin registered, by kind and name, with the owning plugin."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.owners: dict[str, dict[str, str]] = {kind: {} for kind in PLURAL}
        self.clashes: dict[str, dict[str, str]] = {kind: {} for kind in PLURAL}  # name -> why
        self.competitions: dict[str, Competition] = {}
        self.models: dict[str, Callable[..., Any]] = {}
        self.losses: dict[str, Callable[[], Any]] = {}
        self.optimizers: dict[str, Callable[..., Any]] = {}
        self.tasks: dict[str, Task] = {}
        self._collect("register_tasks", "task", self.tasks, self._add_task)
        self._collect("register_competitions", "competition", self.competitions, self._add_competition)
        self._collect("register_models", "model", self.models, self._add_factory)
        self._collect("register_losses", "loss", self.losses, self._add_factory)
        self._collect("register_optimizers", "optimizer", self.optimizers, self._add_factory)

    def _collect(self, hook: str, kind: str, table: dict, adapter: Callable[..., tuple[str, Any]]) -> None:
        for impl in self.manager.implementations(hook):
            added: list[tuple[str, Any]] = []

            def register(*args: Any, _added: list = added) -> None:
                _added.append(adapter(*args))

            if not self.manager.run(impl, register=register):
                continue  # recorded as failed; what it registered before failing is dropped
            plugin = impl.plugin_name
            for name, obj in added:
                if self._claim(kind, name, plugin, table):
                    table[name] = obj
                    getattr(self.manager.plugins[plugin], PLURAL[kind]).append(name)

    @staticmethod
    def _add_factory(name: Any, factory: Any) -> tuple[str, Any]:
        if not isinstance(name, str) or not callable(factory):
            raise CompkitError(f"register() expects (name: str, factory: callable), got ({name!r}, {factory!r})")
        return name, factory

    @staticmethod
    def _add_task(task: Any) -> tuple[str, Any]:
        from compkit.tasks import Task

        if not isinstance(task, Task) or not task.name:
            raise CompkitError(f"register() expects a Task instance with a name, got {task!r}")
        return task.name, task

    @staticmethod
    def _add_competition(competition: Any) -> tuple[str, Any]:
        from compkit.competition import Competition

        if not isinstance(competition, Competition):
            raise CompkitError(f"register() expects a Competition instance, got {competition!r}")
        if not competition.name:
            raise CompkitError(f"{type(competition).__name__} has no name")
        return competition.name, competition

    def _claim(self, kind: str, name: str, plugin: str, table: dict) -> bool:
        """Whether ``plugin`` may have ``name``; on a clash neither plugin gets it, and both are told."""
        owner = self.owners[kind].setdefault(name, plugin)
        if owner == plugin:
            return name not in self.clashes[kind]
        table.pop(name, None)
        names = getattr(self.manager.plugins[owner], PLURAL[kind])
        if name in names:
            names.remove(name)
        records = self.manager.plugins
        message = (f"{kind} {name!r} is registered by two plugins: {records[owner].who()} and "
                   f"{records[plugin].who()}; neither is used: uninstall one of them")
        self.clashes[kind].setdefault(name, message)
        self.manager.note(owner, message)
        self.manager.note(plugin, message)
        return False

    # -- lookups ------------------------------------------------------------------------------

    def competition(self, name: str) -> Competition:
        """The registered competition ``name``; unknown names list the installed ones."""
        if name in self.clashes["competition"]:
            raise CompkitError(self.clashes["competition"][name])
        if name not in self.competitions:
            installed = ", ".join(sorted(self.competitions)) or "none"
            raise CompkitError(f"unknown competition {name!r}; installed: {installed}. {INSTALL_HINT}")
        return self.competitions[name]

    def task(self, name: str) -> Task:
        """The registered task ``name``; unknown names list the registered ones."""
        if name in self.clashes["task"]:
            raise CompkitError(self.clashes["task"][name])
        if name not in self.tasks:
            raise CompkitError(f"unknown task {name!r}; available: {', '.join(sorted(self.tasks))} (a plugin "
                               "adds one with the register_tasks hook, or sets a compkit.tasks.Task instance)")
        return self.tasks[name]

    def model(self, name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
              image_size: tuple[int, int] | None = None) -> torch.nn.Module:
        """Build model ``family/variant`` (or ``family``) with ``num_classes`` outputs. ``image_size``
        (height, width) goes to a factory that names an ``image_size`` parameter (a detector sizes its
        own input transform with it); others do not get it."""
        family, _, variant = name.partition("/")
        if family in self.clashes["model"]:
            raise CompkitError(self.clashes["model"][family])
        if family not in self.models:
            families = ", ".join(f"{f}/..." if f in ("timm", "unet") else f for f in sorted(self.models))
            raise CompkitError(f"unknown model family {family!r} in {name!r}; available: {families}")
        factory = self.models[family]
        sized = {"image_size": image_size} if image_size is not None and "image_size" in _parameters(factory) else {}
        return factory(variant or None, num_classes, in_channels=in_channels, pretrained=pretrained, **sized)

    def loss(self, name: str, *, config: Any = None, competition: Competition | None = None,
             class_weights: Any = None) -> torch.nn.Module:
        """Build the registered loss ``name``. A factory may take ``config`` and ``competition`` keyword
        arguments (class weights, ignore index, anchors...): it gets those it names, as pluggy hooks do.
        ``class_weights`` (config ``class_weights = balanced``: a float32 tensor, one per class, see
        ``compkit.balance``) goes to a factory that names it; one that does not is refused."""
        if name in self.clashes["loss"]:
            raise CompkitError(self.clashes["loss"][name])
        if name not in self.losses:
            raise CompkitError(f"unknown loss {name!r}; available: {', '.join(sorted(self.losses))}")
        factory = self.losses[name]
        offered = {"config": config, "competition": competition}
        accepted = _parameters(factory)
        if class_weights is not None:
            if "class_weights" not in accepted:
                raise CompkitError(f"class_weights = balanced: loss {name!r} takes no class weights (its factory "
                                   "has no class_weights parameter): use ce, ce-smooth or bce, or set "
                                   "class_weights = none")
            offered["class_weights"] = class_weights
        return factory(**{key: value for key, value in offered.items() if key in accepted})

    def optimizer(self, name: str) -> Callable[..., Any]:
        """The registered optimizer factory ``name``: ``factory(param_groups, config)``."""
        if name in self.clashes["optimizer"]:
            raise CompkitError(self.clashes["optimizer"][name])
        if name not in self.optimizers:
            raise CompkitError(f"unknown optimizer {name!r}; available: {', '.join(sorted(self.optimizers))} "
                               "(a plugin adds one with the register_optimizers hook)")
        return self.optimizers[name]


def _parameters(factory: Callable[..., Any]) -> Mapping[str, Any]:
    """The parameters ``factory`` names (none readable for a builtin or C factory)."""
    import inspect

    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}


@functools.cache
def get() -> Registry:
    """The process-wide registry (plugins load once)."""
    return Registry(plugins.manager())
