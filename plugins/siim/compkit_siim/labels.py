"""The organisers' mask file: one row per pneumothorax region in relative RLE, merged into one mask per image.

``train-rle.csv`` has the header ``ImageId, EncodedPixels`` (pandas reads the second column as
``" EncodedPixels"``) and values with a leading space; ``-1`` marks an image without pneumothorax.
``stage_2_train.csv`` has the same content without the spaces. Both are read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from compkit import rle
from compkit.errors import CompkitError

ID_COLUMN = "ImageId"
RLE_COLUMN = "EncodedPixels"


def read_labels(path: Path) -> pd.DataFrame:
    """Rows ``ImageId, EncodedPixels`` as stripped strings ("-1" for empty), in the file's order."""
    if not Path(path).is_file():
        raise CompkitError(f"mask file {path} is missing; run compkit download siim (or --demo)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [str(column).strip() for column in frame.columns]
    if list(frame.columns[:2]) != [ID_COLUMN, RLE_COLUMN]:
        raise CompkitError(
            f"{path} has the header {list(frame.columns)}; expected 'ImageId, EncodedPixels' "
            "(as in train-rle.csv or stage_2_train.csv)"
        )
    frame = frame[[ID_COLUMN, RLE_COLUMN]].apply(lambda column: column.str.strip())
    _check_rows(path, frame.reset_index(drop=True))
    return frame.reset_index(drop=True)


def _check_rows(path: Path, frame: pd.DataFrame) -> None:
    """Refuse rows the organisers' rules do not allow, naming their lines (line 1 is the header).

    Every row needs an ImageId and an EncodedPixels value (``-1`` for no pneumothorax); an image
    with regions has no ``-1`` row, since the two say opposite things.
    """
    def lines(rows) -> str:
        return ", ".join(str(row + 2) for row in list(rows)[:5])

    for column in (ID_COLUMN, RLE_COLUMN):
        blank = frame.index[frame[column] == ""]
        if len(blank):
            advice = " (write -1 for an image without pneumothorax)" if column == RLE_COLUMN else ""
            raise CompkitError(f"{path} has {len(blank)} row(s) with an empty {column}, on line(s) {lines(blank)}"
                               + advice)
    empty = frame[RLE_COLUMN].map(rle.is_empty)
    both = sorted(set(frame.loc[empty, ID_COLUMN]) & set(frame.loc[~empty, ID_COLUMN]))
    if both:
        rows = frame.index[frame[ID_COLUMN] == both[0]]
        raise CompkitError(f"{path}: image {both[0]} has both a -1 row (no pneumothorax) and region rows, on lines "
                           f"{lines(rows)} ({len(both)} image(s) like it): remove its -1 row or its regions")


def regions_by_image(labels: pd.DataFrame) -> dict[str, list[str]]:
    """Each image's non-empty RLE strings, images in order of first appearance; [] for "-1" only."""
    regions: dict[str, list[str]] = {}
    for image_id, encoded in zip(labels[ID_COLUMN], labels[RLE_COLUMN], strict=True):
        found = regions.setdefault(image_id, [])
        if not rle.is_empty(encoded):
            found.append(encoded)
    return regions


def merge_regions(encoded: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """One mask uint8 (H, W) of 0/1: the union of every region, each in the organisers' relative RLE."""
    mask = np.zeros(shape, dtype=np.uint8)
    for region in encoded:
        np.maximum(mask, rle.decode(region, shape, relative=True), out=mask)
    return mask
