"""A synthetic SIIM twin in the real raw layout: noisy chest-like DICOMs with bright blobs as pneumothorax.

Small (256x256 images, not 1024) so a CPU trains on it in minutes; every file, name pattern, header
quirk and RLE convention is the real one, so the code that reads it is the code that reads Kaggle's.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import generate_uid

from compkit import rle
from compkit_siim import layout
from compkit_siim.dicom import write_dicom
from compkit_siim.labels import ID_COLUMN, RLE_COLUMN

IMAGE_SIZE = 256
TRAIN_IMAGES = 80
TEST_IMAGES = 24
POSITIVE_FRACTION = 0.45
TWO_SIDED_FRACTION = 0.3  # of positive images: one region in each lung, so several rows in train-rle.csv
TEST_TRUTH = "test-rle.csv"  # demo only: the held-out masks, to score a demo submission
LUNG_CENTRES = (-0.42, 0.42)  # x of the two lung fields, image coordinates in [-1, 1]


def write_demo(root: Path, seed: int = 0) -> None:
    """Write the DICOM folders, train-rle.csv, the demo's test-rle.csv and sample_submission.csv."""
    rng = np.random.default_rng(seed)
    for stage, folder, count, labels in (
        ("train", layout.TRAIN_IMAGES, TRAIN_IMAGES, root / layout.LABELS),
        ("test", layout.TEST_IMAGES, TEST_IMAGES, root / TEST_TRUTH),
    ):
        rows = []
        for index in range(count):
            image, mask = make_case(rng, IMAGE_SIZE, positive=rng.random() < POSITIVE_FRACTION)
            image_id, study, series = (
                _uid(seed, stage, index, part) for part in ("image", "study", "series")
            )
            write_dicom(
                root / folder / study / series / f"{image_id}.dcm",
                image,
                image_id,
                study,
                series,
                patient=f"demo-{stage}-{index}",
            )
            rows += [(image_id, encoded) for encoded in region_rows(mask)]
        write_mask_file(labels, rows)
    layout.write_sample(root, force=True)


def write_mask_file(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write rows the organisers' way: header ``ImageId, EncodedPixels``, a space before every value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{ID_COLUMN}, {RLE_COLUMN}"] + [f"{image_id}, {encoded}" for image_id, encoded in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def region_rows(mask: np.ndarray) -> list[str]:
    """One relative-RLE string per 8-connected region of ``mask`` (H, W), or ["-1"] when it is empty."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [rle.encode(labels == region, relative=True) for region in range(1, count)] or [layout.EMPTY]


def make_case(rng: np.random.Generator, size: int, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like image uint8 (size, size) and its pneumothorax mask uint8 (size, size) of 0/1."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1
    lungs = [_ellipse(x, y, centre, -0.05, 0.32, 0.64) for centre in LUNG_CENTRES]
    image = 175 - 25 * y + rng.normal(0, 8) * x
    for lung in lungs:
        image -= 85 * cv2.GaussianBlur(lung.astype(np.float32), (0, 0), size / 40)
    ribs = 10 * np.sin(2 * np.pi * (5.5 * y + 1.2 * x**2) + rng.uniform(0, 2 * np.pi))
    image += ribs * (lungs[0] | lungs[1])
    mask = np.zeros((size, size), dtype=bool)
    if positive:
        sides = [0, 1] if rng.random() < TWO_SIDED_FRACTION else [int(rng.integers(2))]
        for side in sides:
            mask |= _blob(rng, x, y, LUNG_CENTRES[side]) & lungs[side]
        image += 70 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0) + rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _blob(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, centre: float) -> np.ndarray:
    """An irregular region in the outer, upper part of a lung: three overlapping ellipses, roughened."""
    outward = 1.0 if centre > 0 else -1.0
    cx, cy = centre + outward * rng.uniform(0.0, 0.15), rng.uniform(-0.5, 0.25)
    region = np.zeros(x.shape, dtype=bool)
    for _ in range(3):
        dx, dy = rng.normal(0, 0.05, 2)
        region |= _ellipse(x, y, cx + dx, cy + dy, *rng.uniform(0.08, 0.17, 2))
    rough = cv2.GaussianBlur(
        region.astype(np.float32) + rng.normal(0, 0.35, x.shape).astype(np.float32), (0, 0), 3
    )
    return rough > 0.5


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1


def _uid(seed: int, stage: str, index: int, part: str) -> str:
    """A valid DICOM UID, the same for the same seed, stage, index and part (study/series/image)."""
    return str(generate_uid(entropy_srcs=[f"compkit-siim-demo-{seed}", stage, str(index), part]))
