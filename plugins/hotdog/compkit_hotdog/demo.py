"""A synthetic twin of d2l's hotdog.zip: small PNGs of varying size in hotdog/{train,test}/{hotdog,not-hotdog}/.

A hotdog is a red-brown sausage on a tan bun; the other foods are round, square or triangular
and never that long red-brown shape, so a small network learns the difference in a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from compkit_hotdog import CLASSES
from compkit_hotdog.layout import FOLDER

COUNTS = {"train": 40, "test": 20}  # per class; the real zip has about 1,000 and 400


def _background(rng: np.random.Generator) -> np.ndarray:
    height, width = (int(v) for v in rng.integers(48, 97, 2))
    colour = rng.integers(150, 240, 3)
    return np.clip(colour + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)


def draw_hotdog(rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) RGB: a tan bun with a red-brown sausage along it, at a random angle."""
    image = _background(rng)
    height, width = image.shape[:2]
    centre = (width // 2 + int(rng.integers(-4, 5)), height // 2 + int(rng.integers(-4, 5)))
    length, angle = int(min(height, width) * rng.uniform(0.35, 0.45)), float(rng.uniform(0, 180))
    bun = (int(rng.integers(200, 235)), int(rng.integers(160, 190)), int(rng.integers(100, 130)))
    sausage = (int(rng.integers(150, 190)), int(rng.integers(50, 75)), int(rng.integers(30, 50)))
    cv2.ellipse(image, centre, (length, max(4, length // 3)), angle, 0, 360, bun, -1)
    cv2.ellipse(image, centre, (length + 3, max(2, length // 8)), angle, 0, 360, sausage, -1)
    return image


def draw_other_food(rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3) RGB: a salad, a pizza slice, a plate or a sandwich, never a long red-brown shape."""
    image = _background(rng)
    height, width = image.shape[:2]
    cx, cy = width // 2 + int(rng.integers(-4, 5)), height // 2 + int(rng.integers(-4, 5))
    r = int(min(height, width) * rng.uniform(0.25, 0.4))
    kind = int(rng.integers(0, 4))
    if kind == 0:  # salad: green leaves
        for _ in range(6):
            offset = rng.integers(-r // 2, r // 2 + 1, 2)
            green = (int(rng.integers(40, 90)), int(rng.integers(140, 200)), int(rng.integers(40, 80)))
            cv2.circle(image, (cx + int(offset[0]), cy + int(offset[1])), max(3, r // 2), green, -1)
    elif kind == 1:  # pizza slice: yellow triangle with small red dots
        points = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(image, [points], (240, 200, 80))
        for _ in range(4):
            dx, dy = (int(v) for v in rng.integers(-r // 3, r // 3 + 1, 2))
            cv2.circle(image, (cx + dx, cy + r // 3 + dy), 2, (200, 40, 30), -1)
    elif kind == 2:  # plate: white disc with a blue rim
        cv2.circle(image, (cx, cy), r, (60, 90, 200), -1)
        cv2.circle(image, (cx, cy), max(2, r - 4), (250, 250, 250), -1)
    else:  # sandwich: a square of bread with a green layer
        cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), (230, 200, 150), -1)
        cv2.rectangle(image, (cx - r, cy - 2), (cx + r, cy + 2), (70, 170, 60), -1)
    return image


def write_demo(root: Path, seed: int) -> None:
    """Write hotdog/{train,test}/{hotdog,not-hotdog}/<i>.png under ``root``."""
    rng = np.random.default_rng(seed)
    painters = {"hotdog": draw_hotdog, "not-hotdog": draw_other_food}
    for split, count in COUNTS.items():
        for label in CLASSES:
            folder = root / FOLDER / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image = painters[label](rng)
                cv2.imwrite(str(folder / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
