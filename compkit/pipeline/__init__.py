"""The CLI's verbs, below the CLI and above everything else; each verb reads what the previous one wrote
(data/NAME, runs/NAME/<run>, submissions/NAME), so any step can be rerun alone.

    data.py         download, make_folds, baseline
    training.py     train, train_folds (and --full, --dry-run), lr_find
    submitting.py   submit (predict, post-process, write, check, upload)
    listing.py      competition_table, plugin_report, kaggle_submissions
    _common.py      the competition, its data and tables, the split, recipes, a run's folds and records
    _build.py       build_model, loaders, the Engine, mixup/cutmix
    _fit.py         one fold's training and the plugins' fit hooks
    _predict.py     a run's models predicting a test table together
    _pseudo.py      soft targets and pseudo-labels from an earlier run

A verb module imports only the shared (underscored) modules, never another verb module. The names below
load their module on first use, so ``from compkit import pipeline`` (and ``compkit --help``) loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "download": "data", "make_folds": "data", "baseline": "data",
    "train": "training", "train_folds": "training", "lr_find": "training",
    "submit": "submitting",
    "competition_table": "listing", "plugin_report": "listing", "kaggle_submissions": "listing",
    "competition": "_common", "table": "_common", "recipe": "_common", "recipe_file": "_common",
    "fold_lock": "_common", "DONE": "_common",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
