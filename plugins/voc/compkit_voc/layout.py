"""The VOC2012 devkit layout as tables, the VOC palette, label PNGs decoded to class indices, and the
test predictions written back as palette PNGs.

``VOCdevkit/VOC2012/JPEGImages/<id>.jpg`` are the photos, ``SegmentationClass/<id>.png`` their labels
(each pixel the VOC palette colour of its class, (224, 224, 192) on the outline of each object, which
no one scores), ``ImageSets/Segmentation/{train,val}.txt`` the official lists of ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from compkit.errors import CompkitError
from compkit_voc import CLASSES, IGNORE_INDEX

DEVKIT = Path("VOCdevkit") / "VOC2012"
IMAGES = DEVKIT / "JPEGImages"
LABELS = DEVKIT / "SegmentationClass"
LISTS = {"train": DEVKIT / "ImageSets" / "Segmentation" / "train.txt",
         "val": DEVKIT / "ImageSets" / "Segmentation" / "val.txt"}
STRIDE = 32  # the FCN's (and every smp encoder's) output stride: padded sizes are multiples of it
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # an id names files (and the output PNGs): no separators
COLUMNS = ["id", "split", "path", "mask", "height", "width"]


def voc_palette() -> np.ndarray:
    """uint8 (256, 3): the VOC devkit's colour map (``VOCdevkit/VOCcode/VOClabelcolormap.m``).

    Colour i spreads the bits of i over the three channels, high bit first: 0 black, 1 (128, 0, 0)
    aeroplane, ..., 20 (0, 64, 128) tv/monitor, and 255 (224, 224, 192), the outline colour.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        code, colour = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette[index] = colour
    return palette


PALETTE = voc_palette()
BORDER = tuple(int(v) for v in PALETTE[IGNORE_INDEX])  # (224, 224, 192)


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    """int32 r << 16 | g << 8 | b of uint8 (..., 3) colours."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


# the colours a label may hold (the classes' and the outline's), sorted, and the index each stands for
_INDICES = np.array([*range(len(CLASSES)), IGNORE_INDEX], dtype=np.uint8)
_ORDER = np.argsort(_colour_keys(PALETTE[_INDICES]))
_KEYS, _VALUES = _colour_keys(PALETTE[_INDICES])[_ORDER], _INDICES[_ORDER]


def _lookup(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 index, bool known) per colour of uint8 (..., 3) ``rgb``: the class (or ``IGNORE_INDEX``) it is."""
    keys = _colour_keys(rgb)
    position = np.minimum(np.searchsorted(_KEYS, keys), len(_KEYS) - 1)
    return _VALUES[position], _KEYS[position] == keys


def decode_colours(rgb: np.ndarray, source: Path | str) -> np.ndarray:
    """uint8 (H, W, 3) RGB palette colours -> uint8 (H, W) class indices (the outline: ``IGNORE_INDEX``).

    A colour that is neither a class's nor the outline's is a CompkitError naming ``source``, the
    first such pixel and its colour.
    """
    indices, known = _lookup(rgb)
    if not known.all():
        y, x = (int(v) for v in np.argwhere(~known)[0])
        colour = tuple(int(v) for v in rgb[y, x])
        raise CompkitError(f"{source}: pixel (x={x}, y={y}) has colour {colour}, which is not a VOC class colour "
                           f"(background (0, 0, 0), aeroplane (128, 0, 0), ...) nor the outline {BORDER}; "
                           f"{int((~known).sum())} pixels are unknown: replace the file, or download the data "
                           "again with compkit download voc --force")
    return indices


def _decode_palette_image(image, source: Path) -> np.ndarray:
    """A mode-P label (VOC's own format): its palette's colours decoded once, then looked up per pixel,
    a tenth of the time of decoding every pixel's colour."""
    indices = np.asarray(image)
    palette = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)[:256]
    palette[:len(colours)] = colours
    table, known = _lookup(palette)
    used = np.bincount(indices.reshape(-1), minlength=256) > 0
    if not known[used].all():
        return decode_colours(palette[indices], source)  # raises, naming the first unknown pixel
    return table[indices]


def read_label(path: Path) -> np.ndarray:
    """A label PNG (palette or RGB) -> uint8 (H, W) class indices, ``IGNORE_INDEX`` on the outlines."""
    from PIL import Image, UnidentifiedImageError

    from compkit.datasets import check_image

    check_image(path)  # missing, or a header declaring a decompression bomb
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                return _decode_palette_image(image, path)
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CompkitError(f"cannot decode label {path} ({error}): replace the file, or download the data again "
                           "with compkit download voc --force") from None
    return decode_colours(rgb, path)


def _read_list(root: Path, split: str) -> list[str]:
    path = root / LISTS[split]
    if not path.is_file():
        raise CompkitError(f"{path} is missing: expected the VOC2012 devkit ({DEVKIT}/JPEGImages, "
                           f"SegmentationClass, ImageSets/Segmentation/{{train,val}}.txt) in {root}; run: "
                           "compkit download voc (or --demo)")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise CompkitError(f"{path} lists no image ids")
    return ids


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image file's header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CompkitError(f"cannot read image {path} ({error}): replace the file, or download the data again "
                           "with compkit download voc --force") from None
    return height, width


def split_table(root: Path) -> pd.DataFrame:
    """Every id of train.txt then val.txt: ``id``, ``split`` (train|val), ``path`` (the JPEG) and ``mask``
    (the label PNG) relative to ``root``, and the image's ``height`` and ``width``."""
    root = Path(root)
    rows = []
    for split, list_path in LISTS.items():
        for number, image_id in enumerate(_read_list(root, split), 1):
            if not ID_PATTERN.fullmatch(image_id):
                raise CompkitError(f"{root / list_path}, line {number}: {image_id!r} is not an image id (letters, "
                                   "digits, _ and -, as 2007_000032)")
            image, label = IMAGES / f"{image_id}.jpg", LABELS / f"{image_id}.png"
            for kind, path in (("image", image), ("label", label)):
                if not (root / path).is_file():
                    raise CompkitError(f"{root / list_path}, line {number}: id {image_id!r} has no {kind} "
                                       f"{root / path}; run: compkit download voc --force")
            rows.append((image_id, split, image.as_posix(), label.as_posix(), *_image_size(root / image)))
    table = pd.DataFrame(rows, columns=COLUMNS)
    twice = table["id"][table["id"].duplicated()]
    if len(twice):
        raise CompkitError(f"id {twice.iloc[0]!r} is listed twice in {root / LISTS['train']} and "
                           f"{root / LISTS['val']}; each id belongs to one list")
    return table


def pad_size(table: pd.DataFrame) -> int:
    """The side of the square every valid / test image is padded to: the smallest multiple of ``STRIDE``
    holding the table's largest image (512 for VOC2012, whose images are at most 500 px)."""
    largest = int(max(table["height"].max(), table["width"].max()))
    return -(-largest // STRIDE) * STRIDE


def padded_labels(root: Path, table: pd.DataFrame, size: int) -> np.ndarray:
    """uint8 (N, size, size): each row's label, top-left, ``IGNORE_INDEX`` in the pad (as valid items are)."""
    stack = np.full((len(table), size, size), IGNORE_INDEX, dtype=np.uint8)
    for row, path in enumerate(table["mask"]):
        label = read_label(Path(root) / path)
        stack[row, :label.shape[0], :label.shape[1]] = label
    return stack


def check_predictions(table: pd.DataFrame, predictions: Sequence[np.ndarray]) -> None:
    """Refuse predictions that cannot be the test images' label maps: a count other than the table's rows,
    a map that is not 2-D integers, smaller than its image, or holding a value that is not a class."""
    if len(predictions) != len(table):
        raise CompkitError(f"{len(predictions)} predicted maps for {len(table)} test images")
    for row, (image_id, height, width) in enumerate(zip(table["id"], table["height"], table["width"])):
        array = np.asarray(predictions[row])
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise CompkitError(f"the prediction for {image_id} (row {row}) must be a 2-D map of class indices; "
                               f"got {array.dtype} {array.shape}")
        if array.shape[0] < height or array.shape[1] < width:
            raise CompkitError(f"the prediction for {image_id} (row {row}) is {array.shape[0]}x{array.shape[1]}, "
                               f"smaller than its image ({height}x{width})")
        crop = array[:height, :width]
        if crop.size and (crop.min() < 0 or crop.max() >= len(CLASSES)):
            bad = int(crop.max()) if crop.max() >= len(CLASSES) else int(crop.min())
            raise CompkitError(f"the prediction for {image_id} (row {row}) holds {bad}, not a class index "
                               f"0..{len(CLASSES) - 1}")


def write_predictions(table: pd.DataFrame, predictions: Sequence[np.ndarray], folder: Path) -> list[Path]:
    """``folder/<id>.png`` per test row: its map cropped to the image's size, as a VOC palette PNG (the
    format of ``SegmentationClass``). Everything is checked before the first file is written."""
    from compkit.outputs import write_palette_png

    check_predictions(table, predictions)
    written = []
    for row, (image_id, height, width) in enumerate(zip(table["id"], table["height"], table["width"])):
        path = Path(folder) / f"{image_id}.png"
        indices = np.ascontiguousarray(np.asarray(predictions[row])[:height, :width], dtype=np.uint8)
        write_palette_png(path, indices, PALETTE)
        written.append(path)
    return written
