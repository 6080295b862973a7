"""Submission rows: masks upscaled to each test image's own size in relative RLE, or pneumothorax probabilities."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from compkit import submission
from compkit.errors import CompkitError
from compkit_siim.labels import ID_COLUMN, RLE_COLUMN

EMPTY = "-1"
PROBABILITY_COLUMN = "Pneumothorax"


def mask_frame(test_table: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
    """``ImageId,EncodedPixels``: each mask (N, S, S) upscaled to its image's (height, width), relative RLE."""
    _check_rows(test_table, predictions)
    shapes = zip(test_table["height"], test_table["width"], strict=True)
    masks = (
        to_original_size(mask, (int(h), int(w))) for mask, (h, w) in zip(predictions, shapes, strict=True)
    )
    return submission.rle_frame(
        test_table[ID_COLUMN].astype(str).tolist(),
        masks,
        columns=(ID_COLUMN, RLE_COLUMN),
        relative=True,
        empty=EMPTY,
    )


def to_original_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask or probabilities (S, S) -> uint8 (H, W) of 0/1: linear resize, then foreground above 0.5.

    Linear rather than nearest so upscaled edges are smooth instead of S-pixel staircases.
    """
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != tuple(shape):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return (mask > 0.5).astype(np.uint8)


def probability_frame(test_table: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
    """``ImageId,Pneumothorax``: the probability of pneumothorax from (N, 2) class probabilities (or (N,))."""
    _check_rows(test_table, predictions)
    predictions = np.asarray(predictions, dtype=np.float64)
    positive = predictions[:, -1] if predictions.ndim == 2 else predictions
    return pd.DataFrame({ID_COLUMN: test_table[ID_COLUMN].astype(str).tolist(), PROBABILITY_COLUMN: positive})


def derived_sample(sample: pd.DataFrame) -> pd.DataFrame:
    """The classification view's sample: the organisers' sample ids, in order, each with probability 0.5."""
    return pd.DataFrame({ID_COLUMN: sample[ID_COLUMN].astype(str), PROBABILITY_COLUMN: "0.5"})


def _check_rows(test_table: pd.DataFrame, predictions: np.ndarray) -> None:
    if len(test_table) != len(predictions):
        raise CompkitError(f"{len(test_table)} test images but {len(predictions)} predictions")
