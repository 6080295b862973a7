"""Torch Datasets over the resized-input cache: each DICOM decoded and each mask merged once, at the working size.

The caches (``<root>/.cache/{train,test}-images-<size>-*.npy`` and ``train-masks-...``) always hold
the whole train or test table, so every fold and stage indexes into the same files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from compkit.cache import resized_images, rows_of
from compkit.config import height_width
from compkit.datasets import to_tensor
from compkit.errors import CompkitError
from compkit_siim import layout
from compkit_siim.dicom import dicom_size, read_dicom
from compkit_siim.labels import ID_COLUMN, merge_regions, read_labels, regions_by_image

CACHE = ".cache"


class SiimDataset(Dataset):
    """Rows ``positions`` of cached uint8 arrays (N, S, S), transformed with albumentations.

    Item: ``{"image": float32 [1, S, S], "target": float32 [1, S, S] mask}`` with ``mask_file``,
    ``{"image", "target": int64 []}`` with ``labels``, and only ``image`` with neither (test).
    The arrays are memory-mapped lazily in each process, so workers never pickle them.
    """

    def __init__(
        self,
        image_file: Path,
        positions: np.ndarray,
        transform: Any,
        *,
        mask_file: Path | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.image_file, self.mask_file = Path(image_file), mask_file and Path(mask_file)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.transform = transform
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._arrays: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        position = self.positions[index]
        image = np.array(self._array(self.image_file)[position])
        if self.mask_file is not None:
            out = self.transform(image=image, mask=np.array(self._array(self.mask_file)[position]))
            target = torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.float32)[None])
            return {"image": to_tensor(out["image"]), "target": target}
        item = {"image": to_tensor(self.transform(image=image)["image"])}
        if self.labels is not None:
            item["target"] = torch.tensor(self.labels[index], dtype=torch.int64)
        return item

    def _array(self, path: Path) -> np.ndarray:
        if path not in self._arrays:
            self._arrays[path] = np.load(path, mmap_mode="r")
        return self._arrays[path]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}


class MaskReader:
    """Callable: a training DICOM's path -> its merged mask uint8 (size, size) of 0/1.

    Decoded at the image's own size, then area-resized and cut at 0.5: a working pixel is
    foreground when at least half of the original pixels under it are.
    """

    def __init__(self, regions: dict[str, list[str]], size: int, source: Path) -> None:
        self.regions, self.size, self.source = regions, size, source
        digest = hashlib.sha1(json.dumps(regions, sort_keys=True).encode()).hexdigest()[:12]
        # The cache key holds the reader's name: putting the masks' digest in it makes an edited
        # mask file build a new cache instead of reusing masks that no longer match it.
        self.__qualname__ = f"MaskReader-{digest}"

    def __call__(self, path: Path) -> np.ndarray:
        image_id = Path(path).stem
        try:
            mask = merge_regions(self.regions[image_id], dicom_size(path))
        except CompkitError as error:
            raise CompkitError(f"{self.source}, image {image_id}: {error}") from None
        return resize_mask(mask, self.size)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A 0/1 mask (H, W) -> uint8 (size, size), or ``size`` (height, width), of 0/1: area (or linear when
    enlarging) resize, cut at 0.5."""
    height, width = height_width(size)
    if mask.shape == (height, width):
        return mask.astype(np.uint8)
    shrinking = mask.shape[0] > height or mask.shape[1] > width
    fraction = cv2.resize(
        mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    return (fraction >= 0.5).astype(np.uint8)


def build(
    table: pd.DataFrame,
    root: Path,
    stage: str,
    size: int,
    transform: Any,
    *,
    targets: str | None = None,
    progress: bool = True,
) -> SiimDataset:
    """A SiimDataset over ``table``'s rows; ``targets`` is "mask", "has_mask" or None (test)."""
    root = Path(root)
    full = layout.test_table(root) if stage == "test" else layout.train_table(root)
    group = "test" if stage == "test" else "train"
    paths = [root / path for path in full["path"]]
    images = resized_images(
        paths, size, root / CACHE, channels=1, read=read_dicom, name=f"{group}-images", progress=progress
    )
    positions = rows_of(full[ID_COLUMN].astype(str), table[ID_COLUMN].astype(str))
    if stage == "test" or targets is None:
        return SiimDataset(images.filename, positions, transform)
    if targets == "has_mask":
        return SiimDataset(images.filename, positions, transform, labels=table["has_mask"].to_numpy())
    source = root / layout.LABELS
    reader = MaskReader(regions_by_image(read_labels(source)), size, source)
    masks = resized_images(
        paths, size, root / CACHE, channels=1, read=reader, name=f"{group}-masks", progress=progress
    )
    return SiimDataset(images.filename, positions, transform, mask_file=masks.filename)

