"""The hooks a plugin may implement (all optional), under the pluggy project name "compkit"."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from compkit.competition import Competition

hookspec = pluggy.HookspecMarker("compkit")
hookimpl = pluggy.HookimplMarker("compkit")


@hookspec
def register_competitions(register: Callable[[Competition], None]) -> None:
    """At start-up: call ``register(SomeCompetition())`` for each competition."""


@hookspec
def register_models(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """At start-up: ``register("family", factory)``; ``factory(variant, num_classes, in_channels=3, pretrained=False)`` returns an nn.Module."""


@hookspec
def register_losses(register: Callable[[str, Callable[[], Any]], None]) -> None:
    """At start-up: ``register("name", factory)``; ``factory()`` returns a loss nn.Module. A factory that names
    ``config`` and/or ``competition`` parameters gets the run's Config and Competition (class weights, an
    ignore index...)."""


@hookspec
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """At start-up: ``register("name", factory)``; ``factory(param_groups, config)`` returns a torch optimizer
    (each group carries its own ``lr`` and ``weight_decay``; read other settings from ``config``)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """When the CLI is built: add click commands to ``cli`` (new names only; replacing or removing one is refused)."""


@hookspec
def on_epoch_end(competition: Competition, fold: int, epoch: int, metrics: dict[str, float]) -> None:
    """After each training epoch (rank 0 only), with that epoch's metrics row."""
