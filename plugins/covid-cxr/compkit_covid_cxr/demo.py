"""A synthetic twin of the database: small grey "chest X-rays" in the raw folder layout, one folder per class.

Each picture is a dark chest with two lighter lung fields; the classes differ in what the lungs hold:
Normal nothing, COVID a few soft bright patches at the lungs' outer edges (peripheral ground glass),
Lung_Opacity one large patch low in one lung, Viral Pneumonia many small bright dots over both lungs.
A small network tells them apart in a few epochs. This is not the real data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from compkit_covid_cxr import CLASSES
from compkit_covid_cxr.layout import TOP_FOLDERS

COUNT = 40  # images per class; the real database has 1,345 to 10,192
OLDER_FOLDERS = {"COVID": "COVID", "Normal": "NORMAL", "Viral Pneumonia": "Viral Pneumonia"}  # no Lung_Opacity


def _chest(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """float32 (size, size) picture in [0, 255], its uint8 lung mask, and each lung's (cx, cy, rx, ry)."""
    image = np.full((size, size), float(rng.uniform(20, 45)), np.float32)
    mask = np.zeros((size, size), np.uint8)
    lungs = []
    for side in (-1, 1):
        cx = size // 2 + side * int(size * rng.uniform(0.2, 0.24))
        cy, rx, ry = int(size * rng.uniform(0.48, 0.54)), int(size * 0.16), int(size * rng.uniform(0.3, 0.34))
        cv2.ellipse(mask, (cx, cy), (rx, ry), 0, 0, 360, 255, -1)
        lungs.append((cx, cy, rx, ry))
    image[mask > 0] = float(rng.uniform(70, 95))
    cv2.rectangle(image, (size // 2 - size // 20, 0), (size // 2 + size // 20, size), float(rng.uniform(120, 150)), -1)
    return image, mask, lungs


def _blob(image: np.ndarray, centre: tuple[int, int], radius: int, brightness: float) -> None:
    cv2.circle(image, centre, max(1, radius), float(brightness), -1)


def draw(label: str, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (size, size) grey picture of class ``label`` and its uint8 lung mask (255 inside the lungs)."""
    image, mask, lungs = _chest(rng, size)
    if label == "COVID":
        for cx, cy, rx, ry in lungs:
            side = 1 if cx > size // 2 else -1
            for _ in range(int(rng.integers(2, 4))):
                at = (cx + side * int(rx * rng.uniform(0.4, 0.8)), cy + int(ry * rng.uniform(-0.6, 0.6)))
                _blob(image, at, int(size * rng.uniform(0.05, 0.08)), rng.uniform(150, 185))
    elif label == "Lung_Opacity":
        cx, cy, rx, ry = lungs[int(rng.integers(0, 2))]
        _blob(image, (cx, cy + int(ry * rng.uniform(0.3, 0.5))), int(rx * rng.uniform(0.8, 1.0)), rng.uniform(170, 200))
    elif label == "Viral Pneumonia":
        for cx, cy, rx, ry in lungs:
            for _ in range(int(rng.integers(10, 16))):
                at = (cx + int(rx * rng.uniform(-0.8, 0.8)), cy + int(ry * rng.uniform(-0.8, 0.8)))
                _blob(image, at, 1, rng.uniform(170, 220))
    image = cv2.GaussianBlur(image, (3, 3), 0) + rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_demo(root: Path, seed: int, layout: str = "current") -> None:
    """Write ``COUNT`` PNGs per class under ``root`` in the ``current`` layout
    (COVID-19_Radiography_Dataset/<Class>/{images,masks}/<Class>-<i>.png, four classes) or the ``older`` one
    (COVID-19 Radiography Database/{COVID,NORMAL,Viral Pneumonia}/<FOLDER> (<i>).png, the seed's three)."""
    if layout not in ("current", "older"):
        raise ValueError(f"layout {layout!r}: expected current or older")
    rng = np.random.default_rng(seed)
    folders = {label: label for label in CLASSES} if layout == "current" else OLDER_FOLDERS
    for label, folder_name in folders.items():
        for index in range(1, COUNT + 1):
            image, mask = draw(label, rng, size=int(rng.integers(56, 73)))
            if layout == "current":
                folder = root / TOP_FOLDERS[0] / folder_name
                _write(folder / "images" / f"{folder_name}-{index}.png", image)
                _write(folder / "masks" / f"{folder_name}-{index}.png", mask)
            else:
                _write(root / TOP_FOLDERS[1] / folder_name / f"{folder_name} ({index}).png", image)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
