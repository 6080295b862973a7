"""The decode-once image cache and the Dataset reading it: 2048x1365 JPEG decoding is the bottleneck."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from compkit.cache import resized_images
from compkit.datasets import check_image, read_image
from compkit.errors import CompkitError

CACHE_FOLDER = "cache"


def jpeg_reader(size: int) -> Callable[[Path], np.ndarray]:
    """A reader returning uint8 (H, W, 3) RGB, decoded by libjpeg at the smallest 1/2, 1/4 or 1/8 scale
    that still covers ``size`` x ``size``.

    At 512 px a 2048x1365 leaf decodes at 1/2 scale and the area resize has a quarter of the pixels
    to average: about twice as fast as a full decode plus resize (measured on one core here).
    """
    from PIL import Image

    def read(path: Path) -> np.ndarray:
        check_image(path)
        try:
            with Image.open(path) as image:
                full_size = image.size
                image.draft("RGB", (size, size))  # JPEG only; other formats keep their size
                if image.size != full_size:
                    return np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as error:  # truncated or damaged: Pillow's OSError
            raise CompkitError(f"cannot decode image {path} ({error}): replace the file, or download the "
                               "data again with compkit download plant-pathology --force") from None
        return read_image(path)  # no reduced scale covers size: OpenCV's full decode beats Pillow's

    return read


def cached_images(root: Path, table: pd.DataFrame, stage: str, size: int) -> np.ndarray:
    """Every image of ``table`` at ``size``: a read-only uint8 memmap (N, size, size, 3), built once.

    The whole train (or test) table is cached, never a fold's subset, so all folds share one file.
    """
    name = "test" if stage == "test" else "train"
    paths = [root / path for path in table["path"]]
    return resized_images(paths, size, root / CACHE_FOLDER, read=jpeg_reader(size), name=name)
