"""Generic torch Datasets for image files: decode with OpenCV, albumentations, dict items."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from compkit.errors import CompkitError


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB or (H, W) grayscale."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise CompkitError(f"cannot read image {path} (missing or not an image)")
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

    def load(self, index: int) -> np.ndarray:
        return read_image(self.images[index], self.channels)
