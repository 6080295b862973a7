"""Benchmark: compkit.rle against a numpy flatnonzero encoder/decoder, on 1024x1024 SIIM-like masks.

The speed peer is RLE as a careful competitor writes it with numpy (flatnonzero over the column-major
pixels; split, cumsum and slice assignment to decode). The SIIM organisers' per-pixel Python loops
(re-implemented as they wrote them) are the correctness oracle: every mask is checked against them
once, and their time for that one call is printed too. Masks: pneumothorax-like blobs, an empty
mask (most SIIM images), many small components, and half the pixels at random (the worst case).
Prints a table last: median milliseconds per mask and peer / compkit (target: at least 1.0x on
every row).

    python bench/rle.py --quick     # this CPU: fewer repeats
    python bench/rle.py             # more repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from compkit import rle

SIZE = 1024


def reference_mask2rle(img: np.ndarray, width: int, height: int) -> str:
    """The organisers' encoder; ``img`` is the transposed mask with 255 for foreground."""
    pairs = []
    last_color, current_pixel, run_start, run_length = 0, 0, -1, 0
    for x in range(width):
        for y in range(height):
            current_color = img[x][y]
            if current_color != last_color:
                if current_color == 255:
                    run_start, run_length = current_pixel, 1
                else:
                    pairs.append(str(run_start))
                    pairs.append(str(run_length))
                    run_start, run_length, current_pixel = -1, 0, 0
            elif run_start > -1:
                run_length += 1
            last_color = current_color
            current_pixel += 1
    return " ".join(pairs)


def reference_rle2mask(text: str, width: int, height: int) -> np.ndarray:
    """The organisers' decoder: float 0/255 of shape (width, height); the caller transposes."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in text.split()])
    starts, lengths = array[0::2], array[1::2]
    position = 0
    for index, start in enumerate(starts):
        position += start
        mask[position : position + lengths[index]] = 255
        position += lengths[index]
    return mask.reshape(width, height)


def reference_encode(mask: np.ndarray) -> str:
    return reference_mask2rle(mask.T, SIZE, SIZE)


def reference_decode(text: str) -> np.ndarray:
    return reference_rle2mask(text, SIZE, SIZE).T


def numpy_encode(mask: np.ndarray) -> str:
    """The speed peer's encoder: relative (SIIM) RLE of a (H, W) mask with flatnonzero."""
    pixels = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1])
    starts, ends = changes[0::2], changes[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2] = starts - np.concatenate([[0], ends[:-1]])  # background since the previous run
    runs[1::2] = ends - starts
    return " ".join(map(str, runs.tolist()))


def numpy_decode(text: str) -> np.ndarray:
    """The speed peer's decoder: uint8 0/1 (H, W), a transposed view of column-major pixels as compkit's."""
    pixels = np.zeros(SIZE * SIZE, dtype=np.uint8)
    numbers = np.array(text.split(), dtype=np.int64)
    gaps, lengths = numbers[0::2], numbers[1::2]
    starts = np.cumsum(gaps + np.concatenate([[0], lengths[:-1]]))
    for start, end in zip(starts.tolist(), (starts + lengths).tolist(), strict=True):
        pixels[start:end] = 1
    return pixels.reshape(SIZE, SIZE).T


def ellipse_maker(rows: np.ndarray, columns: np.ndarray) -> Callable[..., np.ndarray]:
    def ellipse(row, column, height, width):
        return ((rows - row) / height) ** 2 + ((columns - column) / width) ** 2 <= 1

    return ellipse


def blob_masks(seed: int = 0) -> dict[str, np.ndarray]:
    """Pneumothorax-like masks (uint8 0/255): a thin crescent, two lobes, a ragged cluster of discs."""
    rng = np.random.default_rng(seed)
    ellipse = ellipse_maker(*np.mgrid[:SIZE, :SIZE])
    crescent = ellipse(500, 250, 300, 120) & ~ellipse(500, 290, 290, 110)
    lobes = ellipse(300, 700, 120, 80) | ellipse(650, 300, 90, 140)
    cluster = np.zeros((SIZE, SIZE), dtype=bool)
    for _ in range(40):
        cluster |= ellipse(*rng.integers(200, 800, size=2), *rng.integers(5, 60, size=2))
    return {
        name: mask.astype(np.uint8) * 255
        for name, mask in [("crescent", crescent), ("lobes", lobes), ("cluster", cluster)]
    }


def components_mask(seed: int = 0, count: int = 400) -> np.ndarray:
    """Many small separate components (uint8 0/255): ``count`` discs of 2-8 px radius over the image."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for row, column, radius in zip(rng.integers(10, SIZE - 10, count), rng.integers(10, SIZE - 10, count),
                                   rng.integers(2, 9, count), strict=True):  # fmt: skip
        top, left = row - radius, column - radius
        rows, columns = np.ogrid[-radius : radius + 1, -radius : radius + 1]
        mask[top : row + radius + 1, left : column + radius + 1] |= rows**2 + columns**2 <= radius**2
    return mask.astype(np.uint8) * 255


def random_mask(seed: int = 0) -> np.ndarray:
    """Half the pixels on at random (uint8 0/255), the last pixel off so every encoder agrees."""
    mask = (np.random.default_rng(seed).random((SIZE, SIZE)) < 0.5).astype(np.uint8) * 255
    mask[-1, -1] = 0
    return mask


def kinds() -> dict[str, list[np.ndarray]]:
    """The masks of each table row."""
    return {
        "blobs": list(blob_masks().values()),
        "empty": [np.zeros((SIZE, SIZE), dtype=np.uint8)],
        "components": [components_mask()],
        "random": [random_mask()],
    }


def median_ms(function: Callable[[object], object], argument: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(argument)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def once_ms(function: Callable[[object], object], argument: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(argument)
    return (time.perf_counter() - start) * 1e3, result


def compkit_encode(mask: np.ndarray) -> str:
    return rle.encode(mask, relative=True)


def compkit_decode(text: str) -> np.ndarray:
    return rle.decode(text, (SIZE, SIZE), relative=True)


def check(mask: np.ndarray) -> tuple[str, float, float]:
    """(the RLE, the organisers' encode ms, decode ms), after checking every side agrees with them."""
    encode_ms, expected = once_ms(reference_encode, mask)
    decode_ms, decoded = once_ms(reference_decode, expected)
    assert compkit_encode(mask) == expected, "compkit and the organisers encode differently"
    assert numpy_encode(mask) == expected, "the numpy peer and the organisers encode differently"
    assert np.array_equal(decoded > 0, mask > 0), "the organisers' decoder does not give the mask back"
    assert np.array_equal(compkit_decode(expected), mask > 0), "compkit does not decode the mask back"
    assert np.array_equal(numpy_decode(expected), mask > 0), "the numpy peer does not decode the mask back"
    return expected, encode_ms, decode_ms


def paired(ours: Callable, theirs: Callable, inputs: list, repeats: int) -> tuple[float, float, float]:
    """(compkit ms, peer ms, peer / compkit): per input the median of ``repeats`` alternated calls, then
    the mean over the inputs."""
    mine, other = [], []
    for argument in inputs:
        times = {ours: [], theirs: []}
        for repeat in range(repeats):
            for function in (ours, theirs) if repeat % 2 == 0 else (theirs, ours):  # cancel drift
                times[function].append(median_ms(function, argument, 1))
        mine.append(statistics.median(times[ours]))
        other.append(statistics.median(times[theirs]))
    ours_ms, theirs_ms = statistics.mean(mine), statistics.mean(other)
    return ours_ms, theirs_ms, theirs_ms / ours_ms


def measure(repeats: int) -> list[tuple]:
    """Table rows (operation, compkit ms, peer ms, ratio, organisers ms) for every kind of mask."""
    rows = []
    for kind, masks in kinds().items():
        checked = [check(mask) for mask in masks]
        texts = [text for text, _, _ in checked]
        encode_ms = statistics.mean(ms for _, ms, _ in checked)
        decode_ms = statistics.mean(ms for _, _, ms in checked)
        label = f"({len(masks)})"
        rows.append(
            (f"encode {kind} {label}", *paired(compkit_encode, numpy_encode, masks, repeats), encode_ms)
        )
        rows.append(
            (f"decode {kind} {label}", *paired(compkit_decode, numpy_decode, texts, repeats), decode_ms)
        )
    return rows


def print_table(rows: list, quick: bool) -> None:
    print(
        f"\nRLE on {SIZE}x{SIZE} masks, relative (SIIM) encoding, median ms per mask ({'quick' if quick else 'full'})"
    )
    print(f"{'operation':<24}{'compkit ms':>11}{'numpy ms':>10}{'numpy/compkit':>15}{'organisers ms':>15}")
    for operation, compkit_ms, peer_ms, ratio, organisers_ms in rows:
        print(f"{operation:<24}{compkit_ms:>11.3f}{peer_ms:>10.3f}{ratio:>14.2f}x{organisers_ms:>15.1f}")
    print("ratio = numpy peer / compkit (target >= 1.0x); organisers: their loops, one call, checked equal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    quick = parser.parse_args().quick
    print_table(measure(repeats=15 if quick else 51), quick)


if __name__ == "__main__":
    main()
