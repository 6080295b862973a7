"""compkit plugin: each fold's per-epoch metrics as TensorBoard scalars, step = epoch.

A fold's events go to ``runs/NAME/RUN/tensorboard/foldK`` (``.../full`` for the ``--full`` fit), so
``tensorboard --logdir runs/NAME/RUN/tensorboard`` shows the folds of a run side by side. Each scalar is
a column of the fold's metrics.csv (train_loss, valid_loss, the metric, lr, seconds, images_per_second);
NaN values (no validation in a full fit) are left out. The run's config is stored as text.

The writer opens at the first epoch logged, with ``purge_step`` at that epoch: a resumed fold hides what
a killed run logged after its last checkpoint, and a fold trained again from scratch hides the old
curves. Importing this module loads no torch (a plugin import is paid by every compkit command).
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

from compkit import hookimpl

FOLDER = "tensorboard"  # in the run folder, one sub-folder per fold

_writers: dict[Path, Any] = {}  # fold folder -> its open SummaryWriter


def log_dir(run_dir: Path) -> Path:
    """Where the events of the fold whose output folder is ``run_dir`` go: ``RUN/tensorboard/foldK``."""
    run_dir = Path(run_dir)
    return run_dir.parent / FOLDER / run_dir.name


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row, without its ``epoch`` (that is the step)."""
    return {name: float(value) for name, value in metrics.items()
            if name != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value)}


def _close(run_dir: Path) -> None:
    writer = _writers.pop(Path(run_dir), None)
    if writer is not None:
        writer.close()


@hookimpl
def on_fit_start(run_dir: Path) -> None:
    _close(run_dir)  # a writer a previous fit of this fold left open (its on_fit_end never came)


@hookimpl
def on_epoch_end(epoch: int, metrics: dict[str, float], run_dir: Path, config: dict[str, Any]) -> None:
    if run_dir is None:  # notify() called outside a fit: no folder to write to
        return
    writer = _writers.get(Path(run_dir))
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(log_dir(run_dir)), purge_step=epoch)
        _writers[Path(run_dir)] = writer
        if config:
            text = json.dumps(config, indent=2, sort_keys=True, default=str)
            writer.add_text("config", "    " + text.replace("\n", "\n    "), global_step=epoch)  # markdown code
    for name, value in scalars(metrics).items():
        writer.add_scalar(name, value, global_step=epoch)
    writer.flush()  # visible in TensorBoard now, and kept if the process is killed


@hookimpl
def on_fit_end(run_dir: Path) -> None:
    _close(run_dir)
