"""Submission files: build the frame a competition expects, check it against the sample, write it atomically.

Ids are compared as strings, so ``1`` and ``"1"`` (before and after a CSV round trip) match.
Row numbers in error messages count data rows from 0, the header not counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from compkit import _io, rle
from compkit.errors import CompkitError

_SHOWN = 5  # rows or values named in an error before "... and N more"


def labels_frame(
    ids: Sequence[Any],
    probabilities: np.ndarray,
    classes: Sequence[str],
    columns: Sequence[str] = ("id", "label"),
) -> pd.DataFrame:
    """One row per id with the name of its most probable class; ``probabilities`` (N, C) float."""
    probabilities = _check_probabilities(ids, probabilities)
    if probabilities.shape[1] != len(classes):
        raise CompkitError(f"{probabilities.shape[1]} probability columns but {len(classes)} class names")
    names = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    return pd.DataFrame({columns[0]: list(ids), columns[1]: names})


def probabilities_frame(
    ids: Sequence[Any], probabilities: np.ndarray, columns: Sequence[str]
) -> pd.DataFrame:
    """The id column, then one column per class; ``probabilities`` (N, C), ``columns`` C + 1 names."""
    probabilities = _check_probabilities(ids, probabilities)
    if len(columns) != probabilities.shape[1] + 1:
        raise CompkitError(
            f"{len(columns)} column names for an id column and {probabilities.shape[1]} classes; "
            f"give {probabilities.shape[1] + 1}, the id column first"
        )
    frame = pd.DataFrame(probabilities, columns=list(columns[1:]))
    frame.insert(0, columns[0], list(ids))
    return frame


def rle_frame(
    ids: Sequence[Any],
    masks: Iterable[np.ndarray],
    columns: Sequence[str] = ("ImageId", "EncodedPixels"),
    relative: bool = False,
    empty: str = "-1",
) -> pd.DataFrame:
    """One row per id with its mask (H, W) run-length encoded (see compkit.rle); ``empty`` for no foreground."""
    encoded = [rle.encode(mask, relative=relative) or empty for mask in masks]
    if len(encoded) != len(ids):
        raise CompkitError(f"{len(ids)} ids but {len(encoded)} masks")
    return pd.DataFrame({columns[0]: list(ids), columns[1]: encoded})


def validate(frame: pd.DataFrame, sample: pd.DataFrame, labels: Iterable[Any] | None = None,
             blank: Iterable[str] = ()) -> None:
    """Raise CompkitError unless ``frame`` matches ``sample``: the same columns in the same order, the
    same ids (first column) in the same order, no missing or blank value (except an empty string in the
    ``blank`` columns, e.g. a PredictionString with no box), and, when ``labels`` is given, every value
    outside the id column in ``labels``. The message names the offending rows.
    """
    _check_columns(frame, sample)
    _check_ids(frame, sample)
    _check_missing(frame, tuple(blank))
    if labels is not None:
        _check_labels(frame, labels)


def write(
    frame: pd.DataFrame,
    path: str | os.PathLike,
    sample: pd.DataFrame | str | os.PathLike | None = None,
    labels: Iterable[Any] | None = None,
    blank: Iterable[str] = (),
) -> None:
    """Validate ``frame`` against ``sample`` (a frame or a CSV path) if given, then write it atomically.
    ``blank``: columns where an empty string is a value (``validate``).

    On any failure nothing is left at ``path`` (an existing file there is kept as it was).
    """
    if sample is not None:
        validate(frame, read_sample(sample) if not isinstance(sample, pd.DataFrame) else sample, labels, blank)
    _io.write_csv(path, frame)


def read_sample(path: str | os.PathLike) -> pd.DataFrame:
    """A sample submission CSV with every value kept as text (ids such as "007" keep their zeros)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _check_probabilities(ids: Sequence[Any], probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or len(probabilities) != len(ids):
        raise CompkitError(
            f"{len(ids)} ids need probabilities of shape ({len(ids)}, C); got {probabilities.shape}"
        )
    return probabilities


def _check_columns(frame: pd.DataFrame, sample: pd.DataFrame) -> None:
    if list(frame.columns) != list(sample.columns):
        raise CompkitError(
            f"submission columns {list(frame.columns)} differ from the sample's {list(sample.columns)}; "
            "use the sample's names in the sample's order (spaces count)"
        )


def _check_ids(frame: pd.DataFrame, sample: pd.DataFrame) -> None:
    ours, theirs = _as_text(frame.iloc[:, 0]), _as_text(sample.iloc[:, 0])
    if len(ours) == len(theirs) and (ours == theirs).all():
        return
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"{len(ours)} rows where the sample has {len(theirs)}")
    unexpected = np.flatnonzero(~np.isin(ours, theirs))
    if len(unexpected):
        problems.append(f"ids not in the sample at {_describe_rows(frame, unexpected)}")
    repeated = np.flatnonzero(pd.Series(ours).duplicated().to_numpy())
    if len(repeated):
        problems.append(f"repeated ids at {_describe_rows(frame, repeated)}")
    missing = theirs[~np.isin(theirs, ours)]
    if len(missing):
        problems.append(f"sample ids missing: {_describe_values(missing)}")
    if not problems:
        problems.append(
            f"ids out of the sample's order at {_describe_rows(frame, np.flatnonzero(ours != theirs))}"
        )
    raise CompkitError(
        f"submission ids (column {sample.columns[0]!r}) do not match the sample: {'; '.join(problems)}. "
        "Build the submission from the sample's ids, in the sample's order"
    )


def _check_missing(frame: pd.DataFrame, allowed: tuple[str, ...] = ()) -> None:
    blank = frame.isna() | frame.apply(
        lambda column: (column.astype(str).str.strip() == "") & (column.name not in allowed or column.isna()))
    rows = np.flatnonzero(blank.to_numpy().any(axis=1))
    if len(rows):
        columns = [str(name) for name in frame.columns[blank.to_numpy().any(axis=0)]]
        raise CompkitError(
            f"submission has missing or blank values in column(s) {columns} at {_describe_rows(frame, rows)}; "
            "every cell needs a value (an empty mask is written as '-1')"
        )


def _check_labels(frame: pd.DataFrame, labels: Iterable[Any]) -> None:
    allowed = {str(label) for label in labels}
    values = frame.iloc[:, 1:].astype(str)
    unknown = ~values.isin(allowed).to_numpy()
    rows = np.flatnonzero(unknown.any(axis=1))
    if len(rows):
        raise CompkitError(
            f"submission has values outside the allowed labels at {_describe_rows(frame, rows)}: "
            f"{_describe_values(np.unique(values.to_numpy()[unknown]))}; allowed: {_describe_values(sorted(allowed))}"
        )


def _as_text(column: pd.Series) -> np.ndarray:
    return column.astype(str).to_numpy()


def _describe_rows(frame: pd.DataFrame, positions: np.ndarray) -> str:
    """e.g. "rows 3 (id 'a'), 8 (id 'b') and 4 more (6 rows in all)"."""
    ids = frame.iloc[positions[:_SHOWN], 0].tolist()
    shown = ", ".join(
        f"{position} (id {identifier!r})"
        for position, identifier in zip(positions[:_SHOWN], ids, strict=True)
    )
    more = (
        f" and {len(positions) - _SHOWN} more ({len(positions)} rows in all)"
        if len(positions) > _SHOWN
        else ""
    )
    return f"row{'s' if len(positions) > 1 else ''} {shown}{more}"


def _describe_values(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(str(value)) for value in list(values)[:_SHOWN])
    more = f" and {len(values) - _SHOWN} more ({len(values)} in all)" if len(values) > _SHOWN else ""
    return f"{shown}{more}"
