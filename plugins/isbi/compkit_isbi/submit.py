"""The submission: one multi-page float32 TIFF of the test slices, as the challenge took it, plus PNG masks.

The model predicts membrane probabilities; the challenge's TIFF holds the opposite, 0 for certain membrane
and 1 for certain non-membrane, so its pages are ``1 - p``. The masks are white (255) for cell and black for
membrane like the training labels, membrane where ``p > 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from compkit import outputs
from compkit.errors import CompkitError

TIFF_NAME = "test-probabilities.tif"
MASK_FOLDER = "masks"
MASK_THRESHOLD = 0.5  # the tutorial's


def write_submission(test_table: pd.DataFrame, predictions: Sequence[np.ndarray], folder: Path) -> list[Path]:
    """Check every prediction, then write ``folder/test-probabilities.tif`` and ``folder/masks/<id>.png``.

    ``predictions[i]``: float32 (H, W) membrane probabilities of ``test_table``'s row i at the model's
    size; resized (linearly) to the slice's ``height`` x ``width`` when the model ran at another size.
    """
    ids = test_table["id"].astype(str).tolist()
    what = "ISBI test predictions (membrane probabilities)"
    checked = outputs.check_stack(predictions, count=len(test_table), what=what, names=ids)
    size = _page_size(test_table)
    membrane = np.stack([_resized(array, size) for array in checked])
    outputs.check_stack(membrane, count=len(ids), shape=size, what=what, names=ids)
    tiff = outputs.write_tiff_stack(folder / TIFF_NAME, 1.0 - membrane)
    masks = outputs.write_png_masks(folder / MASK_FOLDER, ids, membrane, MASK_THRESHOLD, above=0, below=255)
    return [tiff, *masks]


def _page_size(test_table: pd.DataFrame) -> tuple[int, int]:
    """The one (height, width) of the test slices: a TIFF stack's pages share a size."""
    sizes = sorted(set(zip(test_table["height"].astype(int), test_table["width"].astype(int))))
    if len(sizes) != 1:
        raise CompkitError(f"the test slices have {len(sizes)} sizes ({', '.join(f'{h}x{w}' for h, w in sizes)}); "
                           "the pages of one TIFF stack share a size")
    return sizes[0]


def _resized(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``size`` map; linear interpolation keeps the values inside their range."""
    import cv2

    array = probabilities.astype(np.float32, copy=False)
    if array.shape == size:
        return array
    return cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
