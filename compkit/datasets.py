"""Generic torch Datasets for image files: decode with OpenCV, albumentations, dict items."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from compkit.errors import CompkitError

MAX_IMAGE_PIXELS = 150_000_000  # about 12,000 x 12,000: 450 MB decoded as RGB uint8
PIXELS_VARIABLE = "COMPKIT_MAX_IMAGE_PIXELS"


def pixel_limit() -> int | None:
    """The most pixels an image may declare: ``COMPKIT_MAX_IMAGE_PIXELS`` (0: no limit) or the default."""
    value = os.environ.get(PIXELS_VARIABLE, "").strip().replace("_", "")
    if not value:
        return MAX_IMAGE_PIXELS
    if not value.isdigit():
        raise CompkitError(f"{PIXELS_VARIABLE}={value!r} is not a number of pixels (0 means no limit)")
    return int(value) or None


def check_image(path: Path) -> None:
    """Refuse a missing file, or one whose header declares more pixels than ``pixel_limit()``, before decoding.

    A 1 MB PNG can declare 20,000 x 20,000 pixels and cost gigabytes once decoded (a decompression bomb).
    Only the header is read (Pillow). A format Pillow cannot identify is left to the decoder.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise CompkitError(f"image file {path} is missing: check the data folder, or download it again "
                           "with compkit download NAME --force")
    limit = pixel_limit()
    Image.MAX_IMAGE_PIXELS = None  # compkit's limit replaces Pillow's (which warns, then refuses at 2x)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return
    if limit is not None and width * height > limit:
        raise CompkitError(f"image {path} declares {width} x {height} = {width * height:,} pixels, more than "
                           f"the limit of {limit:,} (a decompression bomb?); if it is real, raise the limit "
                           f"with {PIXELS_VARIABLE}=<pixels> (0: no limit)")


def check_files(paths: Sequence[Path]) -> None:
    """Refuse a list of image files with some missing, before any work starts, naming the first few."""
    missing = [str(path) for path in paths if not os.path.isfile(path)]
    if missing:
        raise CompkitError(f"{len(missing)} of {len(paths)} image files are missing, e.g. {', '.join(missing[:3])}: "
                           "check the data folder, or download it again with compkit download NAME --force")


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB or (H, W) grayscale, after ``check_image``."""
    check_image(path)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        image = cv2.imread(str(path), flag)
    except cv2.error as error:  # OpenCV's own size limit (CV_IO_MAX_IMAGE_PIXELS) and decoder failures
        raise CompkitError(f"cannot decode image {path}: {error.err or error}") from None
    if image is None:
        raise CompkitError(f"cannot decode image {path} (damaged, truncated or not an image): replace the "
                           "file, or download the data again with compkit download NAME --force")
    return image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) float array -> float32 tensor (C, H, W)."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def target_tensor(target: Any, task: str) -> torch.Tensor:
    """int64 scalar for classification with a class index, else float32 (soft or multi-label)."""
    array = np.asarray(target)
    if task == "classification" and array.ndim == 0:
        return torch.tensor(int(array), dtype=torch.int64)
    return torch.tensor(array, dtype=torch.float32)  # a copy: pandas 3 hands out read-only arrays


@dataclasses.dataclass(frozen=True)
class _MemmapFile:
    path: str


class ArrayDataset(Dataset):
    """Images already in memory as a uint8 array (N, H, W) or (N, H, W, C), with optional targets.

    Item: ``{"image": float32 [C, H, W], "target": int64 [] or float32 [C]}`` (no target at test).
    """

    def __init__(self, images: Sequence[Any], targets: Sequence[Any] | None, transform: Any,
                 task: str = "classification", rows: np.ndarray | None = None) -> None:
        self.images = images
        self.targets = targets
        self.transform = transform
        self.task = task
        # sample i is images[rows[i]]: a fold reads its rows of a cache made once for the whole table
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images) if self.rows is None else len(self.rows)

    def load(self, index: int) -> np.ndarray:
        """The uint8 image (H, W) or (H, W, C) of sample ``index``."""
        if self.rows is None:
            return self.images[index]
        return np.array(self.images[self.rows[index]])  # a writable copy, not a view of a read-only cache

    def __getstate__(self) -> dict[str, Any]:
        # A memmap pickles as all of its bytes: send a spawned worker the file name instead.
        state = self.__dict__.copy()
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = _MemmapFile(str(self.images.filename))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], _MemmapFile):
            state["images"] = np.load(state["images"].path, mmap_mode="r")
        self.__dict__.update(state)

    def selected_images(self) -> np.ndarray:
        """This dataset's images as one uint8 array (N, H, W[, C]), in sample order."""
        return np.asarray(self.images) if self.rows is None else np.asarray(self.images)[self.rows]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        item = {"image": to_tensor(image)}
        if self.targets is not None:
            item["target"] = target_tensor(self.targets[index], self.task)
        return item


class ImageDataset(ArrayDataset):
    """Images decoded from files on each access (``paths`` in place of an array)."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[Any] | None, transform: Any,
                 task: str = "classification", channels: int = 3) -> None:
        super().__init__(list(paths), targets, transform, task)
        self.channels = channels
        check_files(self.images)

    def load(self, index: int) -> np.ndarray:
        return read_image(self.images[index], self.channels)
