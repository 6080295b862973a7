"""Run-length encoding of 2-D masks: Kaggle's standard form and the SIIM organisers' relative form.

Both walk the pixels column by column (top to bottom, then left to right). Standard starts are
1-based and absolute; relative starts are 0-based and count the background since the previous run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from compkit.errors import CompkitError

# Values that mean "no foreground": SIIM CSV cells start with a space (" -1"), and pandas reads an
# empty cell as NaN.
_EMPTY_VALUES = ("", "-1")
# Below this many numbers, str.join formats faster than the vectorised writer (its fixed cost is ~50 µs).
SHORT_TEXT = 1000


def encode(mask: np.ndarray, relative: bool = False) -> str:
    """Encode a mask (H, W), any dtype, nonzero = foreground, as "start length ..." ("" if empty).

    ``relative=False``: 1-based absolute starts (Kaggle's usual encoding).
    ``relative=True``: the SIIM organisers' variant; the first start is 0-based and absolute, every
    later start is the number of background pixels since the end of the previous run.
    """
    starts, lengths = _runs(mask)
    # The organisers' encoder never closed a run that reached the last pixel (it dropped the run);
    # ours closes it, and their decoder reads such a run correctly.
    starts = starts - _previous_ends(starts, lengths) if relative else starts + 1
    return _join(starts, lengths)


def decode(rle: Any, shape: tuple[int, int], relative: bool = False) -> np.ndarray:
    """Decode an RLE string into a uint8 0/1 mask (H, W); "", "-1", " -1", None and NaN give zeros.

    ``relative`` selects the encoding, as in :func:`encode`. The mask is a transposed view of the
    column-major pixels (Fortran order, as the organisers' decoder returns it): numpy, torch and
    cv2 accept it; call ``np.ascontiguousarray`` for C order (a 1024x1024 copy costs ~1 ms).
    Raises CompkitError naming the value for an odd count, a negative number, runs that overlap or
    are out of order (Kaggle rejects those too), or a run past the end.
    """
    height, width = _check_shape(shape)
    if is_empty(rle):  # zeros from calloc: no pass over the pixels
        return np.zeros((width, height), dtype=np.uint8).T
    gaps, lengths = _gaps_and_lengths(rle, relative)
    tail = height * width - gaps.sum() - lengths.sum()
    if tail < 0:
        raise CompkitError(
            f"RLE value {_preview(rle)} runs past the end of a {height}x{width} mask; "
            f"check the shape and the encoding (relative={relative})"
        )
    # Background and foreground alternate, so one repeat writes every pixel once, in order.
    counts = np.append(np.stack([gaps, lengths], axis=1).ravel(), tail)
    values = np.arange(len(counts), dtype=np.uint8) % 2
    return np.repeat(values, counts).reshape(width, height).T


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-major runs of a mask (H, W): 0-based starts and lengths, two int64 arrays (R,)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise CompkitError(
            f"RLE needs a 2-D mask (H, W); got shape {mask.shape}. Encode one image at a time."
        )
    nonzero = mask != 0
    if not nonzero.any():  # most SIIM images: skip the pass over the pixels
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pixels = _column_major(nonzero)
    edges = np.concatenate(([0], np.flatnonzero(pixels[1:] != pixels[:-1]) + 1, [pixels.size]))
    # the first edge starts a run only when the first pixel is on; the last ends one only when the last is
    edges = edges[int(not pixels[0]) : len(edges) - int(not pixels[-1])]
    starts, ends = edges[0::2], edges[1::2]
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


def _column_major(nonzero: np.ndarray) -> np.ndarray:
    """The pixels of a bool mask (H, W) down the columns, as bool (H * W,)."""
    if nonzero.flags.f_contiguous:  # decode's masks: already column-major, a view
        return nonzero.ravel(order="F")
    import cv2  # here, not at the top: 0.15 s that importing compkit.rle need not cost

    # numpy's transposed copy reads a row apart at each step (~2 ms for 1024x1024, most of an encode);
    # OpenCV transposes in tiles (~0.1 ms).
    return cv2.transpose(np.ascontiguousarray(nonzero).view(np.uint8)).ravel().view(bool)


def is_empty(rle: Any) -> bool:
    """True for the values that mean an empty mask: None, NaN, "", "-1" (surrounding spaces allowed)."""
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        return True
    return str(rle).strip() in _EMPTY_VALUES


def _previous_ends(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """End (exclusive, 0-based) of the run before each run, 0 before the first; int64 (R,)."""
    return np.concatenate(([0], starts[:-1] + lengths[:-1])).astype(np.int64)


def _join(starts: np.ndarray, lengths: np.ndarray) -> str:
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2], pairs[1::2] = starts, lengths
    return _decimal_text(pairs)


def _decimal_text(numbers: np.ndarray) -> str:
    """Non-negative integers (K,) as decimal text joined by spaces.

    Written digit place by digit place into one byte buffer: a random 1024x1024 mask has half a
    million numbers, which " ".join(map(str, ...)) takes ~90 ms to format and this ~5 ms.
    """
    if len(numbers) < SHORT_TEXT:
        return " ".join(map(str, numbers.tolist()))
    # int32 divides faster; int64 only for masks of 2**31 pixels or more.
    numbers = numbers.astype(np.int32 if numbers.max() < 2**31 else np.int64)
    digit_counts = np.ones(len(numbers), dtype=np.int32)
    for power in 10 ** np.arange(1, len(str(numbers.max())), dtype=np.int64):
        digit_counts += numbers >= power
    spaces = np.cumsum(digit_counts + 1) - 1  # where the space after each number goes
    text = np.full(spaces[-1] + 1, ord(" "), dtype=np.uint8)
    positions, rest = spaces - 1, numbers
    while len(rest):
        text[positions] = (rest % 10).astype(np.uint8) + ord("0")
        rest = rest // 10
        more = np.flatnonzero(rest)
        positions, rest = positions[more] - 1, rest[more]
    return text[:-1].tobytes().decode("ascii")


def _gaps_and_lengths(rle: Any, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Background before each run and each run's length, int64 (R,) each, checked."""
    if is_empty(rle):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    try:
        numbers = np.array(str(rle).split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise CompkitError(
            f"RLE value {_preview(rle)} is not a list of integers; expected 'start length ...', '' or '-1'"
        ) from None
    if len(numbers) % 2:
        raise CompkitError(
            f"RLE value {_preview(rle)} has an odd count of numbers ({len(numbers)}); "
            "expected 'start length' pairs"
        )
    starts, lengths = numbers[0::2], numbers[1::2]
    if (lengths < 0).any():
        raise CompkitError(f"RLE value {_preview(rle)} has a negative run length")
    gaps = starts if relative else (starts - 1) - _previous_ends(starts - 1, lengths)
    if (gaps < 0).any():
        expected = (
            "0-based gaps since the previous run" if relative else "1-based, increasing, not overlapping"
        )
        raise CompkitError(
            f"RLE value {_preview(rle)} has a negative start or runs that overlap or go backwards; "
            f"starts are {expected} here (relative={relative})"
        )
    return gaps, lengths


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 1:
        raise CompkitError(f"RLE needs a mask shape (H, W) of two positive ints; got {shape!r}")
    return int(shape[0]), int(shape[1])


def _preview(rle: Any) -> str:
    text = repr(rle)
    return text if len(text) <= 60 else f"{text[:57]}...'"
