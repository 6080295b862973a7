"""The data folder: the tutorial's PNG layout, the challenge's three TIFFs split into it, and slices.csv.

Raw layout (what ``compkit download isbi`` and ``--demo`` leave; the U-Net tutorial's ``data/membrane``)::

    train/image/<n>.png   grey slices, numbered from 0 in stack order
    train/label/<n>.png   their labels: 255 cell, 0 membrane
    test/<n>.png          the test slices

The challenge's own files, ``train-volume.tif``, ``train-labels.tif`` and ``test-volume.tif`` (multi-page,
one page per slice), put in the data folder by hand, are split into that layout instead of downloading.
``slices.csv`` (id, split, path, label, height, width; slice order) is the one table both tables are
cut from; it is built from the folders whenever a table is read (a few PNG headers) and rewritten when
they changed, so slices added or removed by hand are never missed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from compkit import kaggle, outputs
from compkit.errors import CompkitError

IMAGE_FOLDER, LABEL_FOLDER, TEST_FOLDER = "train/image", "train/label", "test"
INDEX = "slices.csv"
COLUMNS = ["id", "split", "path", "label", "height", "width"]
TIFFS = {"train-volume.tif": IMAGE_FOLDER, "train-labels.tif": LABEL_FOLDER, "test-volume.tif": TEST_FOLDER}
SLICE = re.compile(r"\d+")  # <n>.png; the tutorial's test folder also holds its results, <n>_predict.png
RESULT = re.compile(r"\d+_predict")
EXPECTED = (f"{IMAGE_FOLDER}/<n>.png, {LABEL_FOLDER}/<n>.png and {TEST_FOLDER}/<n>.png (the U-Net tutorial's "
            f"data/membrane), or the challenge's {', '.join(TIFFS)}")


def download(root: Path) -> None:
    """The challenge's TIFFs split into PNGs when they are in ``root``, else the tutorial's PNGs fetched
    (each SHA-256 checked); then slices.csv."""
    from compkit_isbi import sources

    if any((root / name).is_file() for name in TIFFS):
        split_tiffs(root)
    else:
        for path, digest in sources.SHA256.items():
            kaggle.url(f"{sources.BASE_URL}/{path}", root / Path(path).parent, sha256=digest)
    write_index(root)


def split_tiffs(root: Path) -> None:
    """Write each page of the three TIFFs as ``<folder>/<page>.png``; the TIFFs stay where they are."""
    missing = [name for name in TIFFS if not (root / name).is_file()]
    if missing:
        raise CompkitError(f"{root} holds some of the challenge's TIFFs but not {', '.join(missing)}; put all "
                           f"three there, or remove them to download the tutorial's PNGs")
    stacks = {name: _grey_stack(root / name) for name in TIFFS}
    volume, labels = stacks["train-volume.tif"], stacks["train-labels.tif"]
    if volume.shape != labels.shape:
        raise CompkitError(f"{root / 'train-labels.tif'} is {labels.shape} (pages, H, W) but train-volume.tif is "
                           f"{volume.shape}: each training slice needs its label page")
    for name, stack in stacks.items():
        for page, picture in enumerate(stack):
            outputs.write_png(root / TIFFS[name] / f"{page}.png", picture)


def _grey_stack(path: Path) -> np.ndarray:
    stack = outputs.read_tiff_stack(path)
    if stack.dtype != np.uint8:
        raise CompkitError(f"{path} holds {stack.dtype} pages; the challenge's TIFFs are 8-bit grey")
    return stack


def slice_files(folder: Path) -> list[Path]:
    """The slices ``<n>.png`` of ``folder`` in slice order; the tutorial's ``<n>_predict.png`` results are
    skipped, any other PNG is an error."""
    if not folder.is_dir():
        raise CompkitError(f"{folder} is missing: expected {EXPECTED}; run: compkit download isbi (or --demo)")
    found = []
    for path in folder.iterdir():
        if path.suffix.lower() != ".png" or path.name.startswith(".") or RESULT.fullmatch(path.stem):
            continue
        if not SLICE.fullmatch(path.stem):
            raise CompkitError(f"{path}: not a slice; slices are named <n>.png by their number in the stack")
        found.append(path)
    if not found:
        raise CompkitError(f"{folder} holds no slices <n>.png: expected {EXPECTED}")
    return sorted(found, key=lambda path: int(path.stem))


def build_index(root: Path) -> pd.DataFrame:
    """slices.csv's rows from the folders: the training slices (each with its label, of its size),
    then the test slices, each in slice order."""
    from PIL import Image

    rows = []
    images, labels = slice_files(root / IMAGE_FOLDER), slice_files(root / LABEL_FOLDER)
    unlabelled = sorted({p.stem for p in images} ^ {p.stem for p in labels}, key=int)
    if unlabelled:
        raise CompkitError(f"slice {unlabelled[0]} is in only one of {root / IMAGE_FOLDER} and {root / LABEL_FOLDER} "
                           f"({len(unlabelled)} such): every training slice needs its label")
    for split, paths in (("train", images), ("test", slice_files(root / TEST_FOLDER))):
        for path in paths:
            with Image.open(path) as image:  # the header only
                width, height = image.size
            label = root / LABEL_FOLDER / path.name if split == "train" else None
            if label is not None:
                with Image.open(label) as mask:
                    if mask.size != (width, height):
                        raise CompkitError(f"{label} is {mask.size[1]}x{mask.size[0]} but its slice {path} is "
                                           f"{height}x{width} (H x W)")
            rows.append((path.stem, split, _relative(path, root), "" if label is None else _relative(label, root),
                         height, width))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_index(root: Path) -> pd.DataFrame:
    """Build slices.csv from the folders and write it (atomically) unless it already says the same."""
    from compkit import _io

    index = build_index(root)
    path = root / INDEX
    if not path.is_file() or path.read_text(encoding="utf-8") != index.to_csv(index=False):
        _io.write_csv(path, index)
    return index


def table(root: Path, split: str) -> pd.DataFrame:
    """The rows of ``split`` (train|test) in slice order; the test table has no label column."""
    index = write_index(Path(root))
    rows = index[index["split"] == split].drop(columns="split").reset_index(drop=True)
    return rows if split == "train" else rows.drop(columns="label")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
