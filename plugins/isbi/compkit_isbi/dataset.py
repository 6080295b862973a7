"""The torch Dataset of slices: a grey PNG and, for training, its label read as a membrane mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from compkit.datasets import check_files, read_image, to_tensor

MEMBRANE_BELOW = 128  # label pixels darker than this are membrane (the labels are 0 membrane, 255 cell)


def membrane_mask(label: np.ndarray) -> np.ndarray:
    """uint8 (H, W) label (0 membrane, 255 cell) -> uint8 (H, W) mask, 1 on membrane."""
    return (label < MEMBRANE_BELOW).astype(np.uint8)


class SliceDataset(Dataset):
    """Rows of a slice table, decoded on each access and transformed with albumentations.

    Item: ``{"image": float32 [1, H, W], "target": float32 [1, H, W]}`` (1 = membrane), only ``image``
    without labels (test).
    """

    def __init__(self, table: pd.DataFrame, root: Path, transform: Any, labelled: bool) -> None:
        self.images = [Path(root) / path for path in table["path"]]
        self.labels = [Path(root) / path for path in table["label"]] if labelled else None
        self.transform = transform
        check_files(self.images + (self.labels or []))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = read_image(self.images[index], channels=1)
        if self.labels is None:
            return {"image": to_tensor(self.transform(image=image)["image"])}
        mask = membrane_mask(read_image(self.labels[index], channels=1))
        out = self.transform(image=image, mask=mask)
        target = torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.float32)[None])
        return {"image": to_tensor(out["image"]), "target": target}
