"""Writers for submissions that are files, not a CSV: a multi-page float32 TIFF, PNG masks, palette PNGs.

Each checks its whole input before it writes anything (``check_stack``), and writes every file under a
temporary name in the target's folder, renamed into place only when complete.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compkit import _io
from compkit.errors import CompkitError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a file name of its own: no folder, no leading dot


def check_stack(stack: Any, *, count: int, shape: Any = None, low: float = 0.0, high: float = 1.0, what: str,
                names: Sequence[str] | None = None) -> list[np.ndarray]:
    """The slices of ``stack`` as a list of 2-D arrays, after checking all of them; else a CompkitError
    saying what is wrong: the slice count, a slice's dimensions or size, a non-number, NaN, or a value
    outside ``[low, high]`` (with the slice and the pixel).

    ``stack``: (N, H, W) array or a sequence of N (H, W) arrays. ``shape``: None (any size, each its
    own), (H, W) for every slice, or one (H, W) per slice. ``what`` names the stack in messages,
    ``names`` (one per slice) name the slices.
    """
    slices = _slices(stack, what)
    if len(slices) != count:
        raise CompkitError(f"{what}: {len(slices)} slice(s), expected {count}; nothing was written")
    if names is not None and len(names) != count:
        raise CompkitError(f"{what}: {len(names)} name(s) for {count} slice(s); nothing was written")
    sizes = _expected_sizes(shape, count, what)
    for index, array in enumerate(slices):
        _check_slice(array, sizes[index], low, high, f"{what}: {_slice_name(index, names)}")
    return slices


def _slices(stack: Any, what: str) -> list[np.ndarray]:
    if isinstance(stack, np.ndarray) and stack.ndim != 3:
        raise CompkitError(f"{what}: expected a stack of 2-D slices (N, H, W), got an array of shape {stack.shape}")
    return [np.asarray(array) for array in stack]


def _expected_sizes(shape: Any, count: int, what: str) -> list[tuple[int, int] | None]:
    """One expected (H, W) per slice (None: any size) from ``check_stack``'s ``shape``."""
    if shape is None:
        return [None] * count
    if np.ndim(shape) == 1 and len(shape) == 2:
        return [(int(shape[0]), int(shape[1]))] * count
    if np.ndim(shape) == 2 and len(shape) == count:
        return [(int(height), int(width)) for height, width in shape]
    raise CompkitError(f"{what}: shape must be (H, W) or one (H, W) per slice ({count}), got {shape!r}")


def _slice_name(index: int, names: Sequence[str] | None) -> str:
    return f"slice {index}" + ("" if names is None else f" ({names[index]})")


def _check_slice(array: np.ndarray, size: tuple[int, int] | None, low: float, high: float, label: str) -> None:
    if array.ndim != 2:
        raise CompkitError(f"{label} has shape {array.shape}, expected a 2-D (H, W) slice; nothing was written")
    if size is not None and array.shape != size:
        raise CompkitError(f"{label} is {array.shape[0]}x{array.shape[1]} (H x W), expected {size[0]}x{size[1]}; "
                           "nothing was written")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise CompkitError(f"{label} holds {array.dtype} values, expected real numbers; nothing was written")
    if array.size == 0:
        raise CompkitError(f"{label} is empty (0 pixels); nothing was written")
    if np.issubdtype(array.dtype, np.floating):
        missing = np.isnan(array)
        if missing.any():
            row, column = np.argwhere(missing)[0]
            raise CompkitError(f"{label} has {int(missing.sum())} NaN value(s), the first at row {row}, column "
                               f"{column}; nothing was written")
    outside = (array < low) | (array > high)
    if outside.any():
        row, column = np.argwhere(outside)[0]
        raise CompkitError(f"{label} has values from {array.min():g} to {array.max():g} ({array[row, column]:g} at "
                           f"row {row}, column {column}), expected {low:g} to {high:g}; nothing was written")


def write_tiff_stack(path: str | os.PathLike, stack: Any) -> Path:
    """Write ``stack`` (N, H, W), N >= 1 slices of one size, as one multi-page float32 TIFF, slice i on
    page i (uncompressed, as scientific readers all take it); returns ``path``."""
    from PIL import Image

    slices = check_stack(stack, count=len(stack), low=-np.inf, high=np.inf, what=f"TIFF stack for {path}")
    if not slices:
        raise CompkitError(f"TIFF stack for {path}: no slices; nothing was written")
    check_stack(slices, count=len(slices), shape=slices[0].shape, low=-np.inf, high=np.inf,
                what=f"TIFF stack for {path} (every page one size)")
    pages = [Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)) for array in slices]
    path = Path(path)
    with _io.atomic_path(path) as temporary:
        pages[0].save(temporary, format="TIFF", save_all=True, append_images=pages[1:])
    return path


def read_tiff_stack(path: str | os.PathLike) -> np.ndarray:
    """The pages of a multi-page TIFF as one array (N, H, W) in page order, in the pages' dtype
    (float32 for a 32-bit float TIFF, uint8 for 8-bit grey)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CompkitError(f"TIFF file {path} is missing")
    try:
        with Image.open(path) as image:
            if image.format != "TIFF":
                raise CompkitError(f"{path} is a {image.format} image, not a TIFF")
            pages = [np.array(page) for page in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CompkitError(f"cannot read TIFF {path} ({error}): damaged, truncated or not a TIFF") from None
    sizes = sorted({page.shape for page in pages})
    if len(sizes) > 1 or pages[0].ndim != 2:
        raise CompkitError(f"TIFF {path}: expected single-channel pages of one size, got page shapes {sizes}")
    return np.stack(pages)


def write_png_masks(folder: str | os.PathLike, names: Sequence[str], probabilities: Any, threshold: float = 0.5, *,
                    above: int = 255, below: int = 0) -> list[Path]:
    """Write ``folder/<name>.png`` for each name: a uint8 grey mask, ``above`` where the probability is
    above ``threshold`` and ``below`` elsewhere; returns the paths in ``names``' order.

    ``probabilities``: (N, H, W) or N arrays (H, W) in [0, 1], one per name. All of them and the names
    (unique, plain file names) are checked before the first file is written.
    """
    names = [str(name) for name in names]
    _check_names(names, f"mask names for {folder}")
    slices = check_stack(probabilities, count=len(names), what=f"mask probabilities for {folder}", names=names)
    for value, which in ((above, "above"), (below, "below")):
        if not 0 <= value <= 255 or int(value) != value:
            raise CompkitError(f"write_png_masks: {which}={value!r} is not a uint8 value (0-255)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, array in zip(names, slices):
        mask = np.where(array > threshold, above, below).astype(np.uint8)
        paths.append(write_png(folder / f"{name}.png", mask))
    return paths


def _check_names(names: Sequence[str], what: str) -> None:
    bad = [name for name in names if not SAFE_NAME.fullmatch(name)]
    if bad:
        raise CompkitError(f"{what}: {bad[0]!r} is not a plain file name (letters, digits, '.', '_', '-', not "
                           "starting with a dot); nothing was written")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CompkitError(f"{what}: {name!r} appears twice, so one file would overwrite the other; nothing "
                               "was written")
        seen.add(name)


def write_palette_png(path: str | os.PathLike, indices: Any, palette: Any) -> Path:
    """Write ``indices`` (H, W) of integer class indices as a mode-"P" PNG with ``palette`` (class i's
    RGB colour: a flat [r0, g0, b0, r1, ...] list or a (K, 3) array, K <= 256); returns ``path``.

    Every index must have a colour (0 <= index < K); a reader gets the indices back from the pixels
    and the colours from the palette, as with the Pascal VOC label PNGs.
    """
    from PIL import Image

    colours = _palette(palette, path)
    (array,) = check_stack([np.asarray(indices)], count=1, low=0, high=len(colours) - 1,
                           what=f"class indices for {path}")
    if not np.issubdtype(array.dtype, np.integer):
        raise CompkitError(f"class indices for {path} are {array.dtype}, expected integers (uint8 class indices)")
    image = Image.fromarray(array.astype(np.uint8))  # mode L; putpalette makes it P and keeps the values
    image.putpalette(colours.reshape(-1).tolist(), rawmode="RGB")
    return _save_png(Path(path), image)


def _palette(palette: Any, path: Any) -> np.ndarray:
    """(K, 3) uint8 colours from a flat list or a (K, 3) array."""
    values = np.asarray(palette)
    if values.ndim == 1 and values.size % 3 == 0:
        values = values.reshape(-1, 3)
    if values.ndim != 2 or values.shape[1] != 3 or not 1 <= len(values) <= 256:
        raise CompkitError(f"palette for {path}: expected a flat list of 3*K values or a (K, 3) array with 1 <= K <= "
                           f"256, got shape {np.shape(palette)}")
    if not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > 255:
        raise CompkitError(f"palette for {path}: colours must be integers 0-255")
    return values.astype(np.uint8)


def write_png(path: str | os.PathLike, image: Any) -> Path:
    """Write a uint8 (H, W) grey or (H, W, 3) RGB array as a PNG at ``path``, atomically; returns ``path``."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise CompkitError(f"PNG {path}: expected a uint8 (H, W) or (H, W, 3) array, got {array.dtype} "
                           f"{array.shape}; nothing was written")
    return _save_png(Path(path), Image.fromarray(array))


def _save_png(path: Path, picture: Any) -> Path:
    with _io.atomic_path(path) as temporary:
        picture.save(temporary, format="PNG")
    return path
