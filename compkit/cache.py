"""A resized-input cache: decode and resize images once into a uint8 .npy that epochs and folds reuse.

The file name carries a hash of the sources (path, size, mtime), the working size and the reader,
so a change to any of them makes a new cache and the stale one is removed. The working size is a
square's side or (height, width): ``images-320x480-...`` and ``images-480x320-...`` are two caches.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from compkit import _io
from compkit.config import height_width, size_text
from compkit.datasets import check_files, read_image
from compkit.errors import CompkitError
from compkit.loaders import usable_cores

Reader = Callable[[Path], np.ndarray]
CHUNK = 64  # most files one thread decodes per task
SMALL_FILE = 64 << 10  # bytes, on average over the first SAMPLE files: decoded by one thread
SAMPLE = 100


def fingerprint(paths: Sequence[Path], *parts: object) -> str:
    """A short hash of the files' paths, sizes and mtimes plus ``parts``."""
    digest = hashlib.sha1()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    for part in parts:
        digest.update(f"{part}\n".encode())
    return digest.hexdigest()[:16]


def resize(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize to ``size`` x ``size``, or to (height, width); INTER_AREA when shrinking keeps thin structures
    (and is fast)."""
    height, width = height_width(size)
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] > height or image.shape[1] > width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resized_images(paths: Sequence[Path], size: int | Sequence[int], cache_dir: Path, *, channels: int = 3,
                   read: Reader | None = None, name: str = "images", workers: int | None = None,
                   progress: bool = True) -> np.ndarray:
    """All ``paths`` decoded and resized: a read-only uint8 memmap (N, H, W[, channels]), ``size`` a
    square's side or (H, W).

    Built once (large files in parallel threads, see ``_threads``; chunks of files per task), then
    reused by every later epoch, fold and run.
    """
    read = read or (lambda path: read_image(path, channels))
    paths = [p if isinstance(p, Path) else Path(p) for p in paths]  # Path(a Path) parses it again: ~5 µs
    check_files(paths)
    reader_name = getattr(read, "__qualname__", "read")
    label = size_text(size)  # "320" for a square, as before (its caches keep their names); "320x480" for H x W
    key = fingerprint(paths, label, channels, reader_name)
    # which files (not their contents): two lists cached under one name never evict each other
    listing = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()[:8]
    target = Path(cache_dir) / f"{name}-{label}-{listing}-{key}.npy"
    if target.is_file():
        return np.load(target, mmap_mode="r")
    shape = (len(paths), *height_width(size)) + ((channels,) if channels > 1 else ())
    with _io.atomic_path(target) as temporary:
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)

        def fill(chunk: range) -> int:
            for index in chunk:
                array[index] = resize(read(paths[index]), size).reshape(shape[1:])
            return len(chunk)

        threads = workers or _threads(paths)
        with ThreadPoolExecutor(threads) as pool:
            bar = tqdm(total=len(paths), desc=f"caching {name} at {label}px", unit="img", disable=not progress)
            for done in pool.map(fill, chunks(len(paths), threads)):
                bar.update(done)
            bar.close()
        array.flush()
    for stale in Path(cache_dir).glob(f"{name}-{label}-{listing}-*.npy"):  # other sizes stay usable
        if stale != target:
            stale.unlink(missing_ok=True)
    return np.load(target, mmap_mode="r")


def _threads(paths: Sequence[Path]) -> int:
    """Threads for decoding ``paths``: one per usable core (at most 8), or one for small files.

    OpenCV and pydicom release the GIL while they decode, so threads pay off for large files; a small
    PNG decodes in less time than threads spend handing the GIL to each other (two threads on 32 px
    PNGs: 1.3x slower and 1.8x the CPU of one).
    """
    sizes = [os.path.getsize(path) for path in paths[:SAMPLE]]
    if sizes and sum(sizes) / len(sizes) < SMALL_FILE:
        return 1
    return min(8, usable_cores())


def chunks(count: int, threads: int) -> list[range]:
    """``range(count)`` cut into pieces for ``threads``: about four each, at most CHUNK files in one.

    One task per file costs more than decoding a small PNG (a future, a lock, a wake-up each);
    four pieces per thread still keep every thread busy to the end when files differ in cost.
    """
    step = max(1, min(CHUNK, math.ceil(count / (4 * threads))))
    return [range(start, min(start + step, count)) for start in range(0, count, step)]


def rows_of(all_ids: Sequence, ids: Sequence) -> np.ndarray:
    """The row of each of ``ids`` in ``all_ids`` (int64 (N,)), to read a subset from a full-table cache.

    A cache always holds the whole train (or test) table, so every fold shares one file.
    """
    import pandas as pd

    found = pd.Index(all_ids).get_indexer(ids)
    if (found < 0).any():
        missing = list(pd.Series(ids)[found < 0][:3])
        raise CompkitError(f"ids {missing} are not in the competition's table; the data changed under the run")
    return found.astype(np.int64)
