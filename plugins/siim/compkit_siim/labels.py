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
    blank = frame.index[frame[ID_COLUMN] == ""]
    if len(blank):
        raise CompkitError(f"{path} has rows without an ImageId (data rows {blank[:5].tolist()})")
    return frame.reset_index(drop=True)


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
