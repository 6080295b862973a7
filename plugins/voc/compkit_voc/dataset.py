"""The torch Dataset over VOC's JPEGs and label PNGs: decoded on each access, image and label transformed together."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from compkit.datasets import check_files, read_image, to_tensor, transform_randomness
from compkit.errors import CompkitError
from compkit_voc.layout import read_label


class VocDataset(Dataset):
    """Images ``images[i]`` with labels ``labels[i]`` (None at test) through the albumentations ``transform``.

    Item: ``{"image": float32 [3, H, W], "target": int64 [H, W]}``, the target a class index per pixel
    (255 where ignored: outlines, and padding); only ``image`` without labels.
    """

    def __init__(self, images: Sequence[Path], labels: Sequence[Path] | None, transform: Any) -> None:
        self.images, self.labels, self.transform = list(images), None if labels is None else list(labels), transform
        check_files(self.images + (self.labels or []))

    def __len__(self) -> int:
        return len(self.images)

    def randomness(self) -> str:
        """Only the transform draws random numbers (see ``compkit.loaders``)."""
        return transform_randomness(self.transform)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = read_image(self.images[index])
        if self.labels is None:
            return {"image": to_tensor(self.transform(image=image)["image"])}
        label = read_label(self.labels[index])
        if label.shape != image.shape[:2]:
            raise CompkitError(f"label {self.labels[index]} is {label.shape[1]}x{label.shape[0]} but its image "
                               f"{self.images[index]} is {image.shape[1]}x{image.shape[0]}: replace one of them")
        out = self.transform(image=image, mask=label)
        return {"image": to_tensor(out["image"]), "target": torch.from_numpy(out["mask"].astype(np.int64))}
