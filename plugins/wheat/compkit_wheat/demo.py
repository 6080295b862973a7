"""A synthetic twin of Global Wheat Detection in Kaggle's layout: bright ellipses ("wheat heads") on field-like
backgrounds, 160x160 JPEGs instead of 1024x1024.

Four sources, each its own background tint and noise, so folds grouped on the source validate on a domain the
model has not seen, as the competition's test set is. train.csv is in the real format: one row per box, the bbox
a string "[x, y, w, h]" (the ellipse's bounding rectangle as drawn, clipped to the image). A few images have no
head and, as in the real data, are only files. This is not the real data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

SIDE = 160
# source -> (background RGB, pixel noise sigma): soil, green canopy, dark canopy, dry stubble
SOURCES = {"arvalis_1": ((112, 84, 60), 10.0), "ethz_1": ((62, 112, 52), 18.0),
           "rres_1": ((38, 64, 40), 6.0), "usask_1": ((120, 116, 98), 24.0)}
PER_SOURCE = 12  # train images per source: 48 in all (the real data has 3,422 over 7 sources)
EMPTY_PER_SOURCE = 1  # of those, images without a head
N_TEST = 8
MAX_HEADS = 8
HEAD_SIZES = (10, 30)  # px, an ellipse's extent along each of its axes


def _hex_ids(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct 9-hex-digit ids, like Kaggle's (``b6ab77fd7``)."""
    ids: list[str] = []
    while len(ids) < count:
        image_id = f"{int(rng.integers(0, 16**9)):09x}"
        if image_id not in ids:
            ids.append(image_id)
    return ids


def _background(rng: np.random.Generator, source: str) -> np.ndarray:
    """float32 (SIDE, SIDE, 3): the source's tint, a smooth texture and its pixel noise."""
    tint, sigma = SOURCES[source]
    texture = cv2.GaussianBlur(rng.normal(0, 1, (SIDE // 8, SIDE // 8, 3)).astype(np.float32), (3, 3), 0)
    texture = cv2.resize(texture, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    return np.float32(tint) + 12 * texture + rng.normal(0, sigma, (SIDE, SIDE, 3)).astype(np.float32)


def _head(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One ellipse's bool (SIDE, SIDE) mask, anywhere (it may be cut by the border), and its box x, y, w, h."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    centre = (int(rng.integers(0, SIDE)), int(rng.integers(0, SIDE)))
    axes = tuple(int(rng.integers(HEAD_SIZES[0], HEAD_SIZES[1] + 1)) // 2 for _ in range(2))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    ys, xs = np.nonzero(mask)
    x, y = int(xs.min()), int(ys.min())
    return mask.astype(bool), (x, y, int(xs.max()) + 1 - x, int(ys.max()) + 1 - y)


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    """Whether ``box`` (x, y, w, h) covers more than a third of a smaller earlier box or is covered so."""
    x, y, w, h = box
    for ox, oy, ow, oh in boxes:
        inter = max(0, min(x + w, ox + ow) - max(x, ox)) * max(0, min(y + h, oy + oh) - max(y, oy))
        if inter > min(w * h, ow * oh) / 3:
            return True
    return False


def draw(rng: np.random.Generator, source: str, heads: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """uint8 (SIDE, SIDE, 3) RGB field of ``source`` with up to ``heads`` yellow-ish ellipses, and their boxes."""
    image = _background(rng, source)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(heads * 4):  # rejection keeps heads from hiding one another
        if len(boxes) == heads:
            break
        mask, box = _head(rng)
        if _overlaps(box, boxes):
            continue
        colour = (rng.uniform(205, 255), rng.uniform(175, 230), rng.uniform(40, 110))
        image[mask] = np.float32(colour) + rng.normal(0, 6, (int(mask.sum()), 3)).astype(np.float32)
        boxes.append(box)
    return np.clip(image, 0, 255).astype(np.uint8), boxes


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


def write_demo(root: Path, seed: int) -> None:
    """train.csv, train/<id>.jpg, test/<id>.jpg and sample_submission.csv under ``root``, the same for a seed."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder in ("train", "test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = list(SOURCES)
    sources = [source for source in names for _ in range(PER_SOURCE)]
    ids = _hex_ids(rng, len(sources) + N_TEST)
    rows = []
    for index, (image_id, source) in enumerate(zip(ids, sources)):
        heads = 0 if index % PER_SOURCE < EMPTY_PER_SOURCE else int(rng.integers(1, MAX_HEADS + 1))
        image, boxes = draw(rng, source, heads)
        _write_jpeg(root / "train" / f"{image_id}.jpg", image)
        rows += [(image_id, SIDE, SIDE, f"[{x:.1f}, {y:.1f}, {w:.1f}, {h:.1f}]", source) for x, y, w, h in boxes]
    pd.DataFrame(rows, columns=["image_id", "width", "height", "bbox", "source"]).to_csv(root / "train.csv",
                                                                                          index=False)
    test_ids = ids[len(sources):]
    for image_id in test_ids:
        _write_jpeg(root / "test" / f"{image_id}.jpg", draw(rng, names[int(rng.integers(len(names)))],
                                                            int(rng.integers(0, MAX_HEADS + 1)))[0])
    # Kaggle's sample gives every test image one made-up box
    pd.DataFrame({"image_id": test_ids, "PredictionString": "1.0 0 0 50 50"}).to_csv(
        root / "sample_submission.csv", index=False)
