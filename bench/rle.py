"""Benchmark: compkit.rle against the SIIM organisers' mask2rle / rle2mask on 1024x1024 masks.

The reference is re-implemented as the organisers wrote it (pure Python loops, relative RLE), and
both sides work on the same masks in the same run. Prints a table last: median milliseconds per
mask and the ratio reference / compkit (targets: encode at least 20x faster, decode never slower).

    python bench/rle.py --quick     # this CPU: fewer repeats, the reference on two masks
    python bench/rle.py             # all masks, more repeats
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


def blob_masks(seed: int = 0) -> dict[str, np.ndarray]:
    """Pneumothorax-like masks (uint8 0/255): a thin crescent, two lobes, a ragged cluster of discs."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:SIZE, :SIZE]

    def ellipse(row, column, height, width):
        return ((rows - row) / height) ** 2 + ((columns - column) / width) ** 2 <= 1

    crescent = ellipse(500, 250, 300, 120) & ~ellipse(500, 290, 290, 110)
    lobes = ellipse(300, 700, 120, 80) | ellipse(650, 300, 90, 140)
    cluster = np.zeros((SIZE, SIZE), dtype=bool)
    for _ in range(40):
        cluster |= ellipse(*rng.integers(200, 800, size=2), *rng.integers(5, 60, size=2))
    return {
        name: mask.astype(np.uint8) * 255
        for name, mask in [("crescent", crescent), ("lobes", lobes), ("cluster", cluster)]
    }


def random_mask(seed: int = 0) -> np.ndarray:
    """Half the pixels on at random (uint8 0/255), the last pixel off so both encoders agree."""
    mask = (np.random.default_rng(seed).random((SIZE, SIZE)) < 0.5).astype(np.uint8) * 255
    mask[-1, -1] = 0
    return mask


def median_ms(function: Callable[[object], object], argument: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(argument)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def mean_ms(function: Callable[[object], object], arguments: list, repeats: int) -> float:
    """Mean over the arguments of the median time of one call, in milliseconds."""
    return statistics.mean(median_ms(function, argument, repeats) for argument in arguments)


def compkit_encode(mask: np.ndarray) -> str:
    return rle.encode(mask, relative=True)


def compkit_decode(text: str) -> np.ndarray:
    return rle.decode(text, (SIZE, SIZE), relative=True)


def check_agreement(mask: np.ndarray) -> str:
    """Both encoders give the same string and both decoders the same mask, or AssertionError."""
    encoded = rle.encode(mask, relative=True)
    assert encoded == reference_encode(mask), "compkit and the reference encode differently"
    assert np.array_equal(rle.decode(encoded, mask.shape, relative=True), reference_decode(encoded) > 0)
    return encoded


def measure(
    masks: dict[str, np.ndarray], reference_names: set[str], repeats: int, reference_repeats: int
) -> list:
    """Table rows (operation, compkit ms, reference ms, ratio) for blob masks and the random mask."""
    rows = []
    for kind, names in [("blobs", [name for name in masks if name != "random"]), ("random", ["random"])]:
        timed = [masks[name] for name in names if name in reference_names]
        encoded = [check_agreement(mask) for mask in timed]
        for operation, ours, theirs, inputs in [
            ("encode", compkit_encode, reference_encode, timed),
            ("decode", compkit_decode, reference_decode, encoded),
        ]:
            compkit_ms = mean_ms(ours, inputs, repeats)
            reference_ms = mean_ms(theirs, inputs, reference_repeats)
            rows.append(
                (f"{operation} {kind} ({len(timed)})", compkit_ms, reference_ms, reference_ms / compkit_ms)
            )
    return rows


def print_table(rows: list, quick: bool) -> None:
    print(
        f"\nRLE on {SIZE}x{SIZE} masks, relative (SIIM) encoding, median ms per mask ({'quick' if quick else 'full'})"
    )
    print(f"{'operation':<22}{'compkit ms':>12}{'reference ms':>14}{'ratio':>9}")
    for operation, compkit_ms, reference_ms, ratio in rows:
        print(f"{operation:<22}{compkit_ms:>12.2f}{reference_ms:>14.2f}{ratio:>8.1f}x")
    print("ratio = reference / compkit; targets: encode >= 20x, decode >= 1x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; the reference on two masks only")
    quick = parser.parse_args().quick
    masks = {**blob_masks(), "random": random_mask()}
    reference_names = {"crescent", "random"} if quick else set(masks)
    repeats, reference_repeats = (9, 3) if quick else (21, 5)
    print_table(measure(masks, reference_names, repeats, reference_repeats), quick)


if __name__ == "__main__":
    main()
