"""A synthetic twin of the ISBI 2012 slices, in the tutorial's raw layout (train/image, train/label, test).

Each slice is a Voronoi tiling: every region is a "cell" of its own grey level with a few darker vesicles
inside, and the pixels where two cells meet form dark membrane lines two pixels wide; then a blur and
noise, like the electron micrographs. Labels are 255 for cell and 0 for membrane, as in ISBI. A small
U-Net learns to tell the lines from the vesicles in a few epochs. This is not the real data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from compkit_isbi.layout import IMAGE_FOLDER, LABEL_FOLDER, TEST_FOLDER

TRAIN_SLICES = 12  # the real set has 30
TEST_SLICES = 4  # the real set has 30
SIZE = 64  # pixels a side; the real slices are 512
CELL_AREA = 260  # mean pixels per cell


def draw(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One slice: uint8 (size, size) grey picture and its uint8 label (255 cell, 0 membrane)."""
    regions = _voronoi(rng, size, max(4, round(size * size / CELL_AREA)))
    membrane = _boundaries(regions)
    levels = rng.uniform(135, 205, size=regions.max() + 1)
    image = levels[regions].astype(np.float32)
    _vesicles(image, membrane, rng)
    image[membrane] = rng.uniform(35, 75)
    image = cv2.GaussianBlur(image, (3, 3), 0.8) + rng.normal(0, 12, image.shape)
    label = np.where(membrane, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _voronoi(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """int (size, size): the index of the nearest of ``cells`` random seed points."""
    seeds = rng.uniform(0, size, size=(cells, 2))
    rows, columns = np.mgrid[0:size, 0:size]
    distances = (rows[..., None] - seeds[:, 0]) ** 2 + (columns[..., None] - seeds[:, 1]) ** 2
    return distances.argmin(axis=-1)


def _boundaries(regions: np.ndarray) -> np.ndarray:
    """bool: pixels with a 4-neighbour in another region (both sides of each edge: two pixels wide)."""
    edge = np.zeros(regions.shape, dtype=bool)
    vertical = regions[1:] != regions[:-1]
    horizontal = regions[:, 1:] != regions[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _vesicles(image: np.ndarray, membrane: np.ndarray, rng: np.random.Generator) -> None:
    """Small round darker spots inside the cells: dark like membrane, but blobs rather than lines."""
    size = image.shape[0]
    for _ in range(int(rng.integers(size // 8, size // 4))):
        row, column = (int(value) for value in rng.integers(3, size - 3, size=2))
        if not membrane[row - 2:row + 3, column - 2:column + 3].any():
            cv2.circle(image, (column, row), int(rng.integers(1, 3)), float(rng.uniform(80, 115)), -1)


def write_demo(root: Path, seed: int) -> None:
    """Write ``TRAIN_SLICES`` slices with labels and ``TEST_SLICES`` test slices under ``root``, numbered
    from 0 like the tutorial's files."""
    rng = np.random.default_rng(seed)
    for index in range(TRAIN_SLICES):
        image, label = draw(rng)
        _write(root / IMAGE_FOLDER / f"{index}.png", image)
        _write(root / LABEL_FOLDER / f"{index}.png", label)
    for index in range(TEST_SLICES):
        _write(root / TEST_FOLDER / f"{index}.png", draw(rng)[0])


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
