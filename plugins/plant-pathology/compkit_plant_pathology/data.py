"""The decode-once image cache and the Dataset reading it: 2048x1365 JPEG decoding is the bottleneck."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from compkit.cache import resized_images
from compkit.config import height_width
from compkit.datasets import read_image

CACHE_FOLDER = "cache"


def jpeg_reader(size: int | tuple[int, int]) -> Callable[[Path], np.ndarray]:
    """A reader returning uint8 (H, W, 3) RGB, decoded by libjpeg at the smallest 1/2, 1/4 or 1/8 scale
    that still covers ``size`` x ``size``.

    At 512 px a 2048x1365 leaf decodes at 1/2 scale and the area resize has a quarter of the pixels
    to average: about twice as fast as a full decode plus resize (measured on one core here).
    """
    side = max(height_width(size))  # both decoded sides stay at least this: covers an H x W resize

    def read(path: Path) -> np.ndarray:  # the cache's fingerprint names this reader: keep its name
        return read_image(path, min_size=side)

    return read


def cached_images(root: Path, table: pd.DataFrame, stage: str, size: int | tuple[int, int]) -> np.ndarray:
    """Every image of ``table`` at ``size`` (a side, or (H, W)): a read-only uint8 memmap (N, H, W, 3), built once.

    The whole train (or test) table is cached, never a fold's subset, so all folds share one file.
    """
    name = "test" if stage == "test" else "train"
    paths = [root / path for path in table["path"]]
    return resized_images(paths, size, root / CACHE_FOLDER, read=jpeg_reader(size), name=name)
