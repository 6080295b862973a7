"""A synthetic twin of VOC2012's segmentation part, in the devkit layout: small JPEG photos of coloured
shapes on a textured background, palette PNG labels with the (224, 224, 192) outline round each shape,
and the train / val lists.

Three classes appear, each its own shape and colour: aeroplane a red ellipse, cat a green triangle,
person a blue upright rectangle; everything else is background. A small network learns the
pixels of each in a few epochs. This is not the real data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from compkit.outputs import write_palette_png
from compkit_voc import CLASSES, IGNORE_INDEX
from compkit_voc.layout import IMAGES, LABELS, LISTS, PALETTE

COUNTS = {"train": 24, "val": 12}  # the real lists have 1,464 and 1,449
SIDES = (56, 101)  # image sides drawn from this range; some are below the demo's 64 px crop
SHAPES = {"aeroplane": (200, 40, 40), "cat": (40, 170, 60), "person": (50, 70, 200)}  # class -> RGB
OUTLINE = 3  # px of ignore round each shape (VOC's outlines are about 5 px)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 (H, W, 3): a greyish-brown base, a smooth large-scale texture and pixel noise."""
    base = rng.uniform(90, 170, 3)
    coarse = cv2.resize(rng.normal(0, 25, (6, 6, 3)).astype(np.float32), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    return base + coarse + rng.normal(0, 10, (height, width, 3))


def _shape_mask(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 (H, W): 1 inside one shape of ``kind`` placed at random, 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    size = int(min(height, width) * rng.uniform(0.22, 0.34))
    cx, cy = int(rng.integers(size, width - size)), int(rng.integers(size, height - size))
    if kind == "aeroplane":
        cv2.ellipse(mask, (cx, cy), (size, max(4, size // 2)), float(rng.uniform(-30, 30)), 0, 360, 1, -1)
    elif kind == "cat":
        points = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
        cv2.fillPoly(mask, [points], 1)
    else:
        cv2.rectangle(mask, (cx - size // 2, cy - size), (cx + size // 2, cy + size), 1, -1)
    return mask


def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) RGB photo and uint8 (H, W) label (class indices, ``IGNORE_INDEX`` on the outlines)
    of one to two shapes; later shapes cover earlier ones, as objects in front do."""
    height, width = (int(v) for v in rng.integers(*SIDES, 2))
    image = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    kernel = np.ones((2 * OUTLINE + 1, 2 * OUTLINE + 1), np.uint8)
    for kind in rng.choice(list(SHAPES), size=int(rng.integers(1, 3)), replace=False):
        inside = _shape_mask(str(kind), rng, height, width).astype(bool)
        ring = cv2.dilate(inside.astype(np.uint8), kernel).astype(bool) & ~inside
        image[inside] = np.asarray(SHAPES[kind]) + rng.normal(0, 12, (int(inside.sum()), 3))
        label[ring & (label == 0)] = IGNORE_INDEX  # an outline never covers an object already drawn
        label[inside] = CLASSES.index(str(kind))
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_demo(root: Path, seed: int) -> None:
    """``COUNTS`` images per list under ``root`` in the devkit layout, ids ``2012_<number>``."""
    rng = np.random.default_rng(seed)
    number = 0
    for split, count in COUNTS.items():
        ids = []
        for _ in range(count):
            number += 1
            image_id = f"2012_{number:06d}"
            image, label = draw(rng)
            (root / IMAGES).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / IMAGES / f"{image_id}.jpg", quality=95)
            (root / LABELS).mkdir(parents=True, exist_ok=True)
            write_palette_png(root / LABELS / f"{image_id}.png", label, PALETTE)  # as SegmentationClass holds
            ids.append(image_id)
        (root / LISTS[split]).parent.mkdir(parents=True, exist_ok=True)
        (root / LISTS[split]).write_text("".join(f"{image_id}\n" for image_id in ids))
