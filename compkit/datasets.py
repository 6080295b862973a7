"""Generic torch Datasets for image files: decode with OpenCV, albumentations, dict items."""

from __future__ import annotations

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
    return torch.as_tensor(array, dtype=torch.float32)


class ImageDataset(Dataset):
    """Images from files with optional class targets.

    Item: ``{"image": float32 [C, H, W], "target": int64 [] or float32 [C]}`` (no target at test).
    """

    def __init__(self, paths: Sequence[Path], targets: Sequence[Any] | None, transform: Any,
                 task: str = "classification", channels: int = 3) -> None:
        self.paths = list(paths)
        self.targets = targets
        self.transform = transform
        self.task = task
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = read_image(self.paths[index], self.channels)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        item = {"image": to_tensor(image)}
        if self.targets is not None:
            item["target"] = target_tensor(self.targets[index], self.task)
        return item
