"""Kaggle's Global Wheat Detection files as tables: train.csv (one row per box) becomes one row per image.

train.csv holds ``image_id,width,height,bbox,source`` with ``bbox`` a string ``"[x, y, w, h]"`` (pixels, top-left
corner). Images without a wheat head have no row: they are only files in ``train/``. The 147,793 bbox strings are
read by pandas' C tokenizer in one pass (about 4x faster than a regular expression per string, which only runs
to name a row that is wrong).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from compkit.errors import CompkitError

TRAIN_CSV = "train.csv"
SAMPLE = "sample_submission.csv"
COLUMNS = ("image_id", "width", "height", "bbox", "source")
NO_SOURCE = "unknown"  # images without boxes are not in train.csv, so nothing says which domain they are from
_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
BBOX = rf"^\s*\[{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\]\s*$"


def _where(path: Path, row: int) -> str:
    """``path, row N (line N + 1)``: rows count the data from 1; the file's line 1 is the header."""
    return f"{path}, row {row + 1} (line {row + 2})"


def read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """``path`` with ``columns`` checked; text columns as strings (ids keep their leading zeros), the others
    as the C parser reads them (``width`` and ``height`` as integers when they all are)."""
    if not path.is_file():
        raise CompkitError(f"{path} is missing; run: compkit download wheat (or --demo)")
    text = {column: str for column in ("image_id", "bbox", "source", "PredictionString")}
    table = pd.read_csv(path, dtype=text, keep_default_na=False)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise CompkitError(f"{path} has no column(s) {', '.join(missing)}; columns: {', '.join(table.columns)}")
    return table


def parse_boxes(table: pd.DataFrame, sizes: np.ndarray, path: Path) -> np.ndarray:
    """float64 [N, 4] (x1, y1, x2, y2) pixels from train.csv's ``bbox`` strings "[x, y, w, h]", checked: each
    parses, has w and h above 0 and lies inside its row's image (``sizes``: int64 [N, 2] width, height)."""
    parts = _numbers(table["bbox"])
    _refuse(~np.isfinite(parts).all(axis=1), table, path, "is not [x, y, w, h] (four numbers)")
    _refuse((parts[:, 2] <= 0) | (parts[:, 3] <= 0), table, path, "has a width or height that is not above 0")
    x1, y1, x2, y2 = parts[:, 0], parts[:, 1], parts[:, 0] + parts[:, 2], parts[:, 1] + parts[:, 3]
    outside = (x1 < 0) | (y1 < 0) | (x2 > sizes[:, 0]) | (y2 > sizes[:, 1])
    _refuse(outside, table, path, "reaches outside its image (width x height columns)")
    return np.stack([x1, y1, x2, y2], axis=1)


def _numbers(column: pd.Series) -> np.ndarray:
    """float64 [N, 4] of the "[x, y, w, h]" strings, NaN rows where one is not four numbers in brackets."""
    fast = _numbers_fast(column)
    # the slow path (a regular expression per string, 4x slower) only runs to find the rows that are wrong
    return fast if fast is not None else column.str.extract(BBOX).to_numpy(np.float64)


def _numbers_fast(column: pd.Series) -> np.ndarray | None:
    """The four numbers of every string, through pandas' C CSV tokenizer; None when a string is not four
    finite numbers in brackets (or brackets are missing or extra: then the slow path tells which)."""
    import csv
    import io

    text = "\n".join(column.tolist())
    if text.count("[") != len(column) or text.count("]") != len(column):
        return None
    try:
        values = pd.read_csv(io.StringIO(text.replace("[", "").replace("]", "")), header=None, names=range(4),
                             dtype=np.float64, quoting=csv.QUOTE_NONE, skip_blank_lines=False, skipinitialspace=True,
                             na_filter=False, engine="c").to_numpy()
    except (ValueError, pd.errors.ParserError):
        return None
    return values if values.shape == (len(column), 4) and np.isfinite(values).all() else None


def read_sizes(table: pd.DataFrame, path: Path) -> np.ndarray:
    """int64 [N, 2] (width, height) of each row, each a whole number above 0."""
    sizes = table[["width", "height"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(sizes).all(axis=1) | (sizes <= 0).any(axis=1) | (sizes != np.round(sizes)).any(axis=1)
    if bad.any():
        row = int(bad.argmax())
        width, height = str(table["width"][row]), str(table["height"][row])
        raise CompkitError(f"{_where(path, row)}: width {width!r} / height {height!r} must be whole numbers of "
                           "pixels above 0")
    return sizes.astype(np.int64)


def _refuse(bad: np.ndarray, table: pd.DataFrame, path: Path, what: str) -> None:
    """CompkitError naming the first row where ``bad`` holds, its image and its bbox value."""
    if bad.any():
        row = int(bad.argmax())
        raise CompkitError(f"{_where(path, row)}: image_id {table['image_id'][row]!r}: bbox {table['bbox'][row]!r} "
                           f"{what}; {int(bad.sum())} such row(s) in all. Fix or drop them")


def _consistent(table: pd.DataFrame, path: Path) -> None:
    """Every row of one image gives it the same width, height and source."""
    for column in ("width", "height", "source"):
        first = table.groupby("image_id", sort=False)[column].transform("first")
        differs = (table[column] != first).to_numpy()
        if differs.any():
            row = int(differs.argmax())
            raise CompkitError(f"{_where(path, row)}: image_id {table['image_id'][row]!r} has {column} "
                               f"{str(table[column][row])!r}, an earlier row of it {str(first[row])!r}")
    empty = (table["source"].str.strip() == "").to_numpy()
    if empty.any():
        row = int(empty.argmax())
        raise CompkitError(f"{_where(path, row)}: image_id {table['image_id'][row]!r} has an empty source")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header (PIL reads no pixels for it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise CompkitError(f"image file {path} is missing; run: compkit download wheat --force") from None
    except (UnidentifiedImageError, OSError) as error:
        raise CompkitError(f"cannot read image {path} ({error}); run: compkit download wheat --force") from None


def train_table(root: Path) -> pd.DataFrame:
    """One row per file in ``train/``, sorted by id: ``image_id``, ``path``, ``width``, ``height``, ``source``
    (``NO_SOURCE`` for images without boxes) and ``target`` (float32 [K, 5]: label 0, x1, y1, x2, y2 in pixels
    of the file; K = 0 for an image without boxes)."""
    path = Path(root) / TRAIN_CSV
    rows = read_csv(path, COLUMNS)
    row_sizes = read_sizes(rows, path)
    corners = parse_boxes(rows, row_sizes, path)
    _consistent(rows, path)
    files = _image_files(Path(root) / "train")
    _check_files(rows, files, path)
    table = pd.DataFrame({"image_id": sorted(files)})
    table["path"] = "train/" + table["image_id"] + ".jpg"
    first = ~rows["image_id"].duplicated().to_numpy()  # each image's first row speaks for it (all agree)
    at = pd.Index(rows["image_id"][first]).get_indexer(table["image_id"])  # -1: an image without boxes
    known = at >= 0
    sizes = np.zeros((len(table), 2), np.int64)
    sizes[known] = row_sizes[first][at[known]]
    # an image without boxes has no row to give its size: its JPEG header does (a few dozen in the real data)
    for index in np.flatnonzero(~known):
        sizes[index] = image_size(files[table["image_id"][index]])
    table["width"], table["height"] = sizes[:, 0], sizes[:, 1]
    source = np.full(len(table), NO_SOURCE, dtype=object)
    source[known] = rows["source"].to_numpy()[first][at[known]]
    table["source"] = source
    table["target"] = _targets(table["image_id"], rows["image_id"], corners)
    return table[["image_id", "path", "width", "height", "source", "target"]]


def _image_files(folder: Path) -> dict[str, Path]:
    """``{image_id: path}`` of the JPEGs in ``folder``."""
    if not folder.is_dir():
        raise CompkitError(f"{folder} is missing; run: compkit download wheat (or --demo)")
    return {file.stem: file for file in folder.glob("*.jpg")}


def _check_files(rows: pd.DataFrame, files: dict[str, Path], path: Path) -> None:
    """Every image_id of train.csv has its JPEG."""
    missing = ~rows["image_id"].isin(files.keys()).to_numpy()
    if missing.any():
        row = int(missing.argmax())
        image_id = rows["image_id"][row]
        count = rows["image_id"][missing].nunique()
        raise CompkitError(f"{_where(path, row)}: image_id {image_id!r} has no file train/{image_id}.jpg "
                           f"({count} image(s) of train.csv have none); run: compkit download wheat --force")


def _targets(image_ids: pd.Series, box_ids: pd.Series, corners: np.ndarray) -> list[np.ndarray]:
    """Per image of ``image_ids``: float32 [K, 5] (label 0, x1, y1, x2, y2) of its boxes, in train.csv's order."""
    position = pd.Index(image_ids).get_indexer(box_ids)  # every box's image is a file: checked before
    order = np.argsort(position, kind="stable")
    rows = np.zeros((len(corners), 5), np.float32)
    rows[:, 1:] = corners[order]
    counts = np.bincount(position, minlength=len(image_ids))
    return np.split(rows, np.cumsum(counts)[:-1])


def test_table(root: Path) -> pd.DataFrame:
    """The sample submission's rows in its order: ``image_id``, ``path`` (test/<id>.jpg), ``width``, ``height``
    (from each JPEG's header)."""
    path = Path(root) / SAMPLE
    sample = read_csv(path, ("image_id",))
    table = pd.DataFrame({"image_id": sample["image_id"]})
    table["path"] = "test/" + table["image_id"] + ".jpg"
    sizes = []
    for row, file in enumerate(table["path"]):
        if not (Path(root) / file).is_file():
            raise CompkitError(f"{_where(path, row)}: image_id {table['image_id'][row]!r} has no file {file}; "
                               "run: compkit download wheat --force")
        sizes.append(image_size(Path(root) / file))
    sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)
    table["width"], table["height"] = sizes[:, 0], sizes[:, 1]
    return table
