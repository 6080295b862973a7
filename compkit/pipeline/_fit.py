"""One fold's training wired into the Engine (datasets, model, loss, optimizer), and the plugins' fit hooks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compkit import _distributed, console, engine, optim, registry
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _build, _pseudo


def fit_fold(comp: Competition, config: Config, table: pd.DataFrame, valid_mask: np.ndarray, root: Path,
             out_dir: Path, *, resume: bool, quiet: bool, fold: int,
             on_start: Callable[[], None] | None = None, after_epoch: Callable[[int], None] | None = None,
             init_from: Path | None = None, limit_batches: int | None = None,
             oof_targets: np.ndarray | None = None,
             pseudo_rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Train on the rows outside ``valid_mask``, validate on the rest; files go to ``out_dir``.

    ``on_start()`` runs once the model and data are ready, before the first epoch; ``after_epoch(epoch)``
    once each epoch's checkpoint is written. ``init_from``: a best.pt whose weights the model starts from.
    ``limit_batches``: train and validate on only that many batches' worth of rows (a dry run).
    ``oof_targets`` (len(table), C): another run's out-of-fold probabilities, mixed into the training rows'
    targets (config ``soft_targets``); ``pseudo_rows``: extra training rows, never validated on (``pseudo``).
    See ``compkit.pipeline._pseudo``.
    """
    import torch

    torch.manual_seed(config.seed)  # the same initial weights for every fold and every rerun
    train_table = table[~valid_mask].reset_index(drop=True)
    valid_table = table[valid_mask].reset_index(drop=True)
    oof_rows = None if oof_targets is None else oof_targets[~valid_mask]
    if limit_batches:
        rows = limit_batches * config.batch_size * config.accumulate
        extra = 0 if pseudo_rows is None else min(len(pseudo_rows), rows // 2)  # a dry run sees both kinds
        train_table = train_table.head(rows - extra)
        valid_table = valid_table.head(limit_batches * config.batch_size)
        oof_rows = None if oof_rows is None else oof_rows[:rows - extra]
        pseudo_rows = None if pseudo_rows is None else pseudo_rows.head(extra)
    if pseudo_rows is not None and len(pseudo_rows):
        if oof_rows is not None:  # pseudo rows keep their hard label
            unknown = np.full((len(pseudo_rows), oof_rows.shape[1]), np.nan, dtype=np.float32)
            oof_rows = np.concatenate([oof_rows, unknown])
        train_table = pd.concat([train_table, pseudo_rows], ignore_index=True)
    reg = registry.get()
    model = _build.build_model(comp, config, config.pretrained)
    dataset, sample_weights, class_weights = training_set(comp, config, train_table, root, oof_rows)
    train_loader = _build.loader(comp, train_table, root, "train", config, dataset=dataset, weights=sample_weights)
    valid_loader = _build.loader(comp, valid_table, root, "valid", config) if len(valid_table) else None  # full fit
    optimizer = optim.build_optimizer(model, config)
    steps = optim.optimizer_steps_per_epoch(len(train_loader), config.accumulate)
    schedule = optim.build_scheduler(optimizer, config, steps, higher_is_better=comp.higher_is_better)

    def epoch_ended(epoch: int, metrics: dict[str, Any]) -> None:
        if after_epoch is not None:
            after_epoch(epoch)
        notify(comp, fold, epoch, metrics)

    loss = reg.loss(config.loss, config=config, competition=comp,
                    class_weights=None if class_weights is None else torch.from_numpy(class_weights))
    if class_weights is not None and isinstance(loss, torch.nn.Module):
        loss = loss.to(engine.resolve_device(config.device))  # the weights live beside the logits
    with _build.make_engine(comp, config, model, loss, optimizer, schedule, quiet=quiet) as trainer:
        if init_from is not None and not (resume and (out_dir / "last.pt").is_file()):
            try:
                trainer.load(init_from)
            except RuntimeError as error:  # load_state_dict: missing, unexpected or mis-shaped weights
                raise CompkitError(f"the weights in {init_from} do not fit {config.model} with {comp.num_classes} "
                                   f"outputs (another model?): {str(error).splitlines()[0]}") from None
        if on_start is not None:
            on_start()
        with FitHooks(comp, fold, out_dir, config.to_dict()) as hooks:  # on_fit_start, then on_fit_end
            hooks.result = trainer.fit(
                train_loader, valid_loader, epochs=config.epochs, score=comp.score, metric=comp.metric,
                higher_is_better=comp.higher_is_better, out_dir=out_dir, patience=config.patience, resume=resume,
                config=config.to_dict(), valid_ids=valid_table[comp.id_column].astype(str).tolist() or None,
                on_epoch_end=epoch_ended,
            )
        return hooks.result


def training_set(comp: Competition, config: Config, table: pd.DataFrame, root: Path,
                 oof_rows: np.ndarray | None) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """(the training dataset of ``table``, the sampler's weight per row or None, the loss's class weights or
    None): soft targets mixed in when ``oof_rows`` is given, class balance as the config asks
    (``compkit.balance``), both from the rows' hard labels."""
    from compkit import balance

    dataset = comp.dataset(table, root, "train", config)
    if oof_rows is None and config.class_weights == "none" and config.sampler == "uniform":
        return dataset, None, None
    hard = balance.hard_targets(comp, table, dataset)
    sample_weights = class_weights = None
    if config.class_weights != "none" or config.sampler != "uniform":
        labels = balance.class_labels(comp, hard)
        class_weights = balance.class_weights(comp, labels) if config.class_weights == "balanced" else None
        sample_weights = balance.sample_weights(comp, labels) if config.sampler == "balanced" else None
        sampled = "; the sampler draws each class about equally often" if sample_weights is not None else ""
        console.echo(f"training rows per class: {balance.describe(comp, labels, class_weights)}{sampled}")
    if oof_rows is not None:
        soft = _pseudo.soft_targets(comp, hard, oof_rows, config.soft_weight)
        dataset = _pseudo.with_targets(dataset, soft)
    return dataset, sample_weights, class_weights


# -- the plugins' hooks -----------------------------------------------------------------------


def notify(comp: Competition, fold: int, epoch: int, metrics: dict[str, float], run_dir: Path | None = None,
           config: dict[str, Any] | None = None) -> None:
    """Call every plugin's on_epoch_end; a failing logger is reported, training goes on.

    ``run_dir`` and ``config`` default to those of the fit in progress (``FitHooks``).
    """
    if _FITTING:
        run_dir = _FITTING[-1].run_dir if run_dir is None else run_dir
        config = _FITTING[-1].config if config is None else config
    call_hooks("on_epoch_end", competition=comp, fold=fold, epoch=epoch, metrics=dict(metrics), run_dir=run_dir,
               config=dict(config or {}))


def call_hooks(hook: str, **arguments: Any) -> None:
    """Call every plugin's ``hook`` on rank 0 only; a failing one is warned about, training goes on."""
    if not _distributed.is_main():
        return
    manager = registry.get().manager
    for impl in manager.implementations(hook):
        if not manager.run(impl, **arguments):
            manager.warn_failed()


_FITTING: list[FitHooks] = []  # the fits in progress, innermost last: notify() gets run_dir and config here


class FitHooks:
    """``with FitHooks(...) as hooks: hooks.result = fit(...)``: the plugins' on_fit_start before the block,
    their on_fit_end after it, also when it raises (Ctrl-C included), with ``result`` None and the error."""

    def __init__(self, comp: Competition, fold: int, run_dir: Path, config: dict[str, Any]) -> None:
        self.comp, self.fold, self.run_dir, self.config = comp, fold, run_dir, config
        self.result: dict[str, Any] | None = None

    def __enter__(self) -> FitHooks:
        _FITTING.append(self)
        try:
            call_hooks("on_fit_start", competition=self.comp, fold=self.fold, run_dir=self.run_dir,
                       config=dict(self.config))
        except BaseException as error:  # a real Ctrl-C inside a hook: the loggers already opened close again
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        try:
            call_hooks("on_fit_end", competition=self.comp, fold=self.fold, run_dir=self.run_dir,
                       result=None if error is not None else self.result, error=error)
        finally:
            _FITTING.remove(self)
