"""compkit plugin: one Weights & Biases run per fold, with the run's config and each epoch's metrics.

Project ``COMPKIT_WANDB_PROJECT`` (default ``compkit-NAME``), group = the compkit run name, name =
``foldK`` (``full`` for the ``--full`` fit), config = the run's config. Each epoch's metrics row is
logged with ``epoch`` as the x axis; the run finishes when the fold's training ends (failed, when it
raised or was interrupted), with the best score and epoch in its summary.

It logs only once W&B is set up, so installing it next to a test suite or CI costs nothing:
``WANDB_MODE`` online/offline, or a ``WANDB_API_KEY``, or a ``wandb login`` (netrc). ``COMPKIT_WANDB=1``
forces it on, ``COMPKIT_WANDB=0`` (or ``WANDB_MODE=disabled``) off. Files go to ``WANDB_DIR`` if set,
else to the compkit run folder (``runs/NAME/RUN/wandb``). The API key is never read, printed or logged
here: only whether one is configured is checked. Importing this module loads neither torch nor wandb.
"""

from __future__ import annotations

import math
import netrc
import numbers
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from compkit import hookimpl

PROJECT_ENV = "COMPKIT_WANDB_PROJECT"
SWITCH_ENV = "COMPKIT_WANDB"  # 1: on, 0: off, unset: on once W&B is set up

_runs: dict[Path, Any] = {}  # fold folder -> its W&B run


def _flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def enabled() -> bool:
    """Whether to log: ``COMPKIT_WANDB`` if given, else whether W&B is set up (a mode, a key or a login)."""
    forced = _flag(SWITCH_ENV)
    if forced is not None:
        return forced
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled" or _flag("WANDB_DISABLED"):
        return False
    return mode in ("online", "offline", "dryrun", "run") or bool(os.environ.get("WANDB_API_KEY")) or _logged_in()


def _logged_in() -> bool:
    """Whether ``wandb login`` stored a key for the W&B host in the netrc file (the key is not kept)."""
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def project(competition: Any) -> str:
    return os.environ.get(PROJECT_ENV) or f"compkit-{competition.name}"


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (NaN, e.g. a full fit's valid_loss, left out)."""
    return {name: value for name, value in metrics.items()
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)}


def _finish(run_dir: Path, exit_code: int) -> None:
    run = _runs.pop(Path(run_dir), None)
    if run is not None:
        run.finish(exit_code=exit_code)


@hookimpl
def on_fit_start(competition: Any, fold: int, run_dir: Path, config: dict[str, Any]) -> None:
    _finish(run_dir, 1)  # a run a previous fit of this fold left open (its on_fit_end never came)
    if not enabled():
        return
    import wandb

    run_dir = Path(run_dir)
    run = wandb.init(
        project=project(competition), group=run_dir.parent.name, name=run_dir.name,
        job_type="full" if fold < 0 else "fold", config=dict(config),
        dir=os.environ.get("WANDB_DIR") or str(run_dir.parent), reinit="create_new",  # read each time
    )
    run.define_metric("epoch")
    run.define_metric("*", step_metric="epoch")
    _runs[run_dir] = run


@hookimpl
def on_epoch_end(epoch: int, metrics: dict[str, float], run_dir: Path) -> None:
    run = _runs.get(Path(run_dir)) if run_dir is not None else None
    if run is not None:
        run.log({**scalars(metrics), "epoch": epoch})


@hookimpl
def on_fit_end(run_dir: Path, result: dict[str, Any] | None, error: BaseException | None) -> None:
    run = _runs.get(Path(run_dir))
    if run is None:
        return
    if result and result.get("best_epoch"):
        run.summary["best_epoch"] = result["best_epoch"]
        if isinstance(result.get("best_score"), numbers.Real) and math.isfinite(result["best_score"]):
            run.summary[f"best_{result['metric']}"] = result["best_score"]
    _finish(run_dir, 0 if error is None else 1)
