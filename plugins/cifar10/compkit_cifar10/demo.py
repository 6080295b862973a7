"""A synthetic twin of the CIFAR-10 files: 32x32 PNGs whose colour and shape depend on the class.

Written unpacked, as ``compkit download cifar10`` leaves the real data after extracting the .7z
archives: train/<id>.png, test/<id>.png, trainLabels.csv (id,label) and sampleSubmission.csv.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from compkit_cifar10 import CLASSES

SIZE = 32
TRAIN_PER_CLASS = 12
TEST_PER_CLASS = 4
SHAPES = ("circle", "square", "triangle", "hbar", "vbar", "cross", "ring", "diagonal", "dots", "frame")


def _colour(rng: np.random.Generator, index: int) -> tuple[int, int, int]:
    """A saturated RGB colour whose hue is the class's own (36 degrees apart), lightly jittered."""
    hue = (index * 18 + int(rng.integers(-3, 4))) % 180  # OpenCV hues run 0..179
    pixel = np.uint8([[[hue, int(rng.integers(200, 256)), int(rng.integers(200, 256))]]])
    return tuple(int(v) for v in cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0])


def draw(rng: np.random.Generator, index: int) -> np.ndarray:
    """One uint8 (32, 32, 3) RGB image of class ``index``: its shape in its colour on a dim noisy background."""
    image = np.clip(rng.normal(40, 15, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    colour = _colour(rng, index)
    cx, cy = (int(v) for v in rng.integers(12, 21, 2))
    r = int(rng.integers(6, 10))
    shape = SHAPES[index]
    if shape == "circle":
        cv2.circle(image, (cx, cy), r, colour, -1)
    elif shape == "square":
        cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    elif shape == "triangle":
        points = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(image, [points], colour)
    elif shape == "hbar":
        cv2.rectangle(image, (cx - r - 3, cy - 2), (cx + r + 3, cy + 2), colour, -1)
    elif shape == "vbar":
        cv2.rectangle(image, (cx - 2, cy - r - 3), (cx + 2, cy + r + 3), colour, -1)
    elif shape == "cross":
        cv2.line(image, (cx - r, cy), (cx + r, cy), colour, 3)
        cv2.line(image, (cx, cy - r), (cx, cy + r), colour, 3)
    elif shape == "ring":
        cv2.circle(image, (cx, cy), r, colour, 2)
    elif shape == "diagonal":
        cv2.line(image, (cx - r, cy - r), (cx + r, cy + r), colour, 3)
    elif shape == "dots":
        cv2.circle(image, (cx - r // 2 - 1, cy), 3, colour, -1)
        cv2.circle(image, (cx + r // 2 + 1, cy), 3, colour, -1)
    else:
        cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), colour, 2)
    return image


def _write(folder: Path, labels: list[int], rng: np.random.Generator) -> list[str]:
    """Write ``folder``/<id>.png for ids 1..N; returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [str(i) for i in range(1, len(labels) + 1)]
    for identifier, label in zip(ids, labels, strict=True):
        cv2.imwrite(str(folder / f"{identifier}.png"), cv2.cvtColor(draw(rng, label), cv2.COLOR_RGB2BGR))
    return ids


def write_demo(root: Path, seed: int) -> None:
    """Write train/, test/, trainLabels.csv and sampleSubmission.csv under ``root``."""
    rng = np.random.default_rng(seed)
    train = rng.permutation(np.repeat(np.arange(len(CLASSES)), TRAIN_PER_CLASS)).tolist()
    test = rng.permutation(np.repeat(np.arange(len(CLASSES)), TEST_PER_CLASS)).tolist()
    train_ids = _write(root / "train", train, rng)
    test_ids = _write(root / "test", test, rng)
    pd.DataFrame({"id": train_ids, "label": [CLASSES[i] for i in train]}).to_csv(
        root / "trainLabels.csv", index=False
    )
    # Kaggle's sample names one class for every row
    pd.DataFrame({"id": test_ids, "label": "cat"}).to_csv(root / "sampleSubmission.csv", index=False)
