"""The hooks a plugin may implement (all optional), under the pluggy project name "compkit"."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import click

    from compkit.competition import Competition
    from compkit.tasks import Task

hookspec = pluggy.HookspecMarker("compkit")
hookimpl = pluggy.HookimplMarker("compkit")


@hookspec
def register_competitions(register: Callable[[Competition], None]) -> None:
    """At start-up: call ``register(SomeCompetition())`` for each competition."""


@hookspec
def register_tasks(register: Callable[[Task], None]) -> None:
    """At start-up: ``register(SomeTask())`` for each task of one's own (a ``compkit.tasks.Task`` subclass
    instance; competitions then name it in ``task``). Built in: classification, multilabel, segmentation,
    multiclass-segmentation."""


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
def on_fit_start(competition: Competition, fold: int, run_dir: Path, config: dict[str, Any]) -> None:
    """Before a fold's first epoch (rank 0 only): open a logger. ``run_dir`` is the fold's output folder
    (``runs/NAME/RUN/foldK``, ``.../full`` for the ``--full`` fit, fold -1); ``config`` the run's config."""


@hookspec
def on_epoch_end(competition: Competition, fold: int, epoch: int, metrics: dict[str, float], run_dir: Path,
                 config: dict[str, Any]) -> None:
    """After each training epoch (rank 0 only), with that epoch's metrics row (``epoch``, ``train_loss``,
    ``valid_loss``, the metric, ``lr``, ``seconds``, ``images_per_second``; NaN where there is no
    validation). ``run_dir`` and ``config`` as in ``on_fit_start``; an implementation may take fewer arguments."""


@hookspec
def on_fit_end(competition: Competition, fold: int, run_dir: Path, result: dict[str, Any] | None,
               error: BaseException | None) -> None:
    """After a fold's training (rank 0 only), also when it failed or was interrupted (Ctrl-C): close a
    logger. ``result`` is what the fit returned (``metric``, ``best_score``, ``best_epoch``,
    ``epochs_run``, ``stopped_early``), None when it raised ``error`` (None when it did not)."""
