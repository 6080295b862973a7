"""A synthetic twin of the Plant Pathology 2020 files: small leaf JPEGs whose spots depend on the class.

Same layout and columns as Kaggle's: train.csv (one-hot), test.csv, sample_submission.csv and
images/Train_<i>.jpg, images/Test_<i>.jpg, at 128x85 instead of 2048x1365 (the same 3:2 shape).
healthy: a clean green leaf; rust: orange spots; scab: brown patches; multiple_diseases: both.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from compkit_plant_pathology import CLASSES

WIDTH, HEIGHT = 128, 85
# The real counts are 516 / 91 / 622 / 592; the demo keeps the rare class rare but present in every fold.
TRAIN_COUNTS = {"healthy": 28, "multiple_diseases": 14, "rust": 30, "scab": 28}
N_TEST = 30


def _points_on_leaf(rng: np.random.Generator, leaf: tuple, count: int) -> np.ndarray:
    """``count`` (x, y) integer points inside the leaf ellipse (centre, axes, angle), away from its edge."""
    (cx, cy), (ax, ay), angle = leaf
    t = rng.uniform(0, 2 * np.pi, count)
    r = 0.75 * np.sqrt(rng.uniform(0, 1, count))
    x, y = r * ax * np.cos(t), r * ay * np.sin(t)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1).round().astype(int)


def draw_leaf(rng: np.random.Generator, label: str) -> np.ndarray:
    """One uint8 (HEIGHT, WIDTH, 3) RGB image of a leaf with the ``label``'s symptoms."""
    background = rng.integers(70, 130, 3)
    image = np.clip(background + rng.normal(0, 12, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    centre = (int(WIDTH / 2 + rng.integers(-8, 9)), int(HEIGHT / 2 + rng.integers(-6, 7)))
    axes = (int(rng.integers(44, 56)), int(rng.integers(24, 32)))
    angle = float(rng.uniform(-25, 25))
    green = (int(rng.integers(40, 80)), int(rng.integers(120, 170)), int(rng.integers(30, 60)))
    cv2.ellipse(image, centre, axes, angle, 0, 360, green, -1)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    tip = np.array([c * axes[0], s * axes[0]])
    start, end = (np.array(centre) - tip).astype(int), (np.array(centre) + tip).astype(int)
    cv2.line(image, tuple(map(int, start)), tuple(map(int, end)), tuple(int(v * 0.7) for v in green), 1)
    leaf = (centre, axes, angle)
    if label in ("rust", "multiple_diseases"):
        for x, y in _points_on_leaf(rng, leaf, int(rng.integers(5, 10))):
            orange = (int(rng.integers(225, 256)), int(rng.integers(110, 160)), int(rng.integers(10, 40)))
            cv2.circle(image, (int(x), int(y)), int(rng.integers(2, 4)), orange, -1)
    if label in ("scab", "multiple_diseases"):
        for x, y in _points_on_leaf(rng, leaf, int(rng.integers(2, 5))):
            brown = (int(rng.integers(80, 115)), int(rng.integers(55, 80)), int(rng.integers(25, 45)))
            patch_axes = (int(rng.integers(5, 10)), int(rng.integers(3, 7)))
            cv2.ellipse(image, (int(x), int(y)), patch_axes, float(rng.uniform(0, 180)), 0, 360, brown, -1)
    return cv2.GaussianBlur(image, (3, 3), 0)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def write_demo(root: Path, seed: int) -> None:
    """Write train.csv, test.csv, sample_submission.csv and images/ under ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    train_labels = [label for label, count in TRAIN_COUNTS.items() for _ in range(count)]
    train_labels = [train_labels[i] for i in rng.permutation(len(train_labels))]
    test_labels = [CLASSES[i] for i in rng.integers(0, len(CLASSES), N_TEST)]
    for prefix, labels in (("Train", train_labels), ("Test", test_labels)):
        for index, label in enumerate(labels):
            _write_jpeg(root / "images" / f"{prefix}_{index}.jpg", draw_leaf(rng, label))
    train = pd.DataFrame({"image_id": [f"Train_{i}" for i in range(len(train_labels))]})
    for name in CLASSES:
        train[name] = [int(label == name) for label in train_labels]
    train.to_csv(root / "train.csv", index=False)
    test_ids = [f"Test_{i}" for i in range(N_TEST)]
    pd.DataFrame({"image_id": test_ids}).to_csv(root / "test.csv", index=False)
    sample = pd.DataFrame({"image_id": test_ids, **{name: 0.25 for name in CLASSES}})
    sample.to_csv(root / "sample_submission.csv", index=False)
