"""Fold splitting: stratified, multi-label stratified or grouped k-fold, or a split the competition
provides (``Competition.fixed_split``), written once per data dir.

``folds.csv`` has one row per training sample: the sample id and its ``fold`` (-1: a row that is
only ever trained on, as in an official train/val split). It is never silently replaced: a request
that would give a different split needs ``force``. A variant that reads another competition's data
folder (``Competition.data_name``) keeps its own ``folds-<name>.csv`` there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from compkit import _io
from compkit.errors import CompkitError

FILE_NAME = "folds.csv"
TRAIN_ONLY = -1  # the fold of a row that no fold validates


def file_name(comp) -> str:
    """The split file of ``comp`` in its data root: folds.csv, or folds-<name>.csv for a variant that
    reads another competition's data (``data_name``)."""
    data_name = getattr(comp, "data_name", None)
    return FILE_NAME if not data_name or data_name == comp.name else f"folds-{comp.name}.csv"


def fixed(table: pd.DataFrame, assignment, *, id_column: str, what: str) -> pd.DataFrame:
    """A split given as one fold per row (``Competition.fixed_split``), checked: one value per row, each
    -1 or 0..K-1 with every fold used; returns ``[id_column, "fold"]``."""
    values = np.asarray(assignment)
    if values.shape != (len(table),):
        raise CompkitError(f"{what} gave {values.shape[0] if values.ndim else 0} folds for {len(table)} training "
                           "rows: it must give one per row")
    if not np.issubdtype(values.dtype, np.integer):
        raise CompkitError(f"{what} must give integer folds (-1 for train-only rows), not {values.dtype}")
    values = values.astype(np.int64)
    used = sorted(set(values.tolist()) - {TRAIN_ONLY})
    if not used or used != list(range(len(used))) or values.min() < TRAIN_ONLY:
        raise CompkitError(f"{what} must number its folds 0..K-1 (and -1 for train-only rows); it gave "
                           f"{sorted(set(values.tolist()))[:10]}")
    if (values == TRAIN_ONLY).sum() == 0 and len(used) == 1:
        raise CompkitError(f"{what} validates every row in fold 0 and trains on none")
    _check_ids(table, id_column)
    return pd.DataFrame({id_column: table[id_column].astype(str).to_numpy(), "fold": values})


def count(split: pd.DataFrame) -> int:
    """The number of folds of ``split`` (train-only rows are in none)."""
    return int(split["fold"].max()) + 1


def split(table: pd.DataFrame, *, id_column: str, n_folds: int, seed: int,
          stratify: str | tuple[str, ...] | None = None, group: str | None = None) -> pd.DataFrame:
    """Assign each row of ``table`` a fold in ``[0, n_folds)``; returns ``[id_column, "fold"]``.

    ``stratify`` names the label column (a tuple names multi-label indicator columns);
    ``group`` keeps rows sharing a value in one fold.
    """
    _check(table, id_column, n_folds, stratify, group)
    labels = _labels(table, stratify)
    splitter = _splitter(n_folds, seed, labels, group)
    folds = np.full(len(table), -1, dtype=np.int64)
    dummy = np.zeros((len(table), 1))
    groups = table[group].to_numpy() if group else None
    y = labels if labels is not None else np.zeros(len(table), dtype=np.int64)
    for fold, (_, valid) in enumerate(splitter.split(dummy, y, groups)):
        folds[valid] = fold
    return pd.DataFrame({id_column: table[id_column].astype(str).to_numpy(), "fold": folds})


def _check(table: pd.DataFrame, id_column: str, n_folds: int, stratify, group) -> None:
    if n_folds < 2:
        raise CompkitError(f"n_folds must be at least 2, got {n_folds}")
    if len(table) < n_folds:
        raise CompkitError(f"{len(table)} training samples cannot make {n_folds} folds")
    for setting, value in {"id_column": id_column, "stratify": stratify, "group": group}.items():
        missing = [column for column in ([value] if isinstance(value, str) else value or ()) if column not in table]
        if missing:
            raise CompkitError(
                f"train table has no column(s) {', '.join(missing)}, which the Competition setting {setting} = "
                f"{value!r} names; set {setting} to one of its columns ({', '.join(map(str, table.columns))})"
                + (" or to None" if setting != "id_column" else "")
            )
    _check_ids(table, id_column)


def _check_ids(table: pd.DataFrame, id_column: str) -> None:
    if id_column not in table:
        raise CompkitError(f"train table has no column {id_column!r} (the Competition setting id_column); its "
                           f"columns: {', '.join(map(str, table.columns))}")
    duplicated = table[id_column][table[id_column].duplicated()]
    if len(duplicated):
        raise CompkitError(f"duplicate ids in the train table, e.g. {', '.join(map(str, duplicated[:5]))}")


def _labels(table: pd.DataFrame, stratify: str | tuple[str, ...] | None) -> np.ndarray | None:
    if stratify is None:
        return None
    if isinstance(stratify, str):
        return pd.factorize(table[stratify])[0]
    return table[list(stratify)].to_numpy().astype(np.int64)


def _splitter(n_folds: int, seed: int, labels: np.ndarray | None, group: str | None):
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    if group:
        if labels is not None and labels.ndim > 1:
            raise CompkitError("grouped folds with multi-label stratification are not supported; "
                               "stratify on one column instead")
        # with no labels, constant labels make StratifiedGroupKFold a shuffled GroupKFold
        return StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if labels is None:
        return KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if labels.ndim > 1:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        return MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)


def read(root: Path, name: str = FILE_NAME) -> pd.DataFrame:
    """``folds.csv`` (or the split file ``name``) from the data root (ids as strings)."""
    path = Path(root) / name
    if not path.is_file():
        raise CompkitError(f"{path} is missing; make it with: compkit folds NAME")
    folds = pd.read_csv(path, dtype=str)
    folds["fold"] = folds["fold"].astype(np.int64)
    return folds


def same(first: pd.DataFrame, second: pd.DataFrame) -> bool:
    """Whether two splits give every id the same fold, in the same order."""
    def normal(split: pd.DataFrame) -> pd.DataFrame:
        return split.astype({split.columns[0]: str, "fold": np.int64}).reset_index(drop=True)

    return normal(first).equals(normal(second))


def write(root: Path, folds: pd.DataFrame, *, force: bool = False, name: str = FILE_NAME) -> bool:
    """Write ``folds.csv`` (or the split file ``name``); True if written, False if an identical split is
    already there.

    A different existing split raises unless ``force``: out-of-fold scores of runs made on
    the old split would silently stop being comparable.
    """
    path = Path(root) / name
    if path.is_file() and not force:
        existing = read(root, name)
        if same(existing, folds):
            return False
        raise CompkitError(
            f"{path} already holds a different split ({count(existing)} folds, "
            f"{len(existing)} rows); pass --force to replace it (runs made on it will no longer match)"
        )
    _io.write_csv(path, folds)
    return True


def assignments(table: pd.DataFrame, folds: pd.DataFrame, id_column: str) -> np.ndarray:
    """The fold of each row of ``table`` (int64, shape (N,)); every id must be in ``folds``."""
    mapping = dict(zip(folds[folds.columns[0]], folds["fold"]))
    ids = table[id_column].astype(str)
    missing = ids[~ids.isin(mapping.keys())]
    if len(missing):
        raise CompkitError(f"{len(missing)} training ids are not in folds.csv (e.g. {', '.join(missing[:3])}); "
                           "the data changed: remake the folds with compkit folds NAME --force")
    return ids.map(mapping).to_numpy(dtype=np.int64)
