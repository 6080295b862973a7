"""Benchmark: building compkit's resized-input cache against a plain loop, on many small PNGs.

compkit.cache.resized_images (file checks, fingerprint, decode and resize in threads, an atomic .npy)
against what a competitor writes: decode each file with OpenCV into one preallocated uint8 array and
np.save it. Same files (CIFAR-like 32x32 PNGs, written once into a temp folder), same process,
alternating, medians. Prints wall-clock files/s and CPU microseconds per file (all threads) for both,
and their ratios; a table is printed last.

    python bench/cache_build.py --quick   # this CPU: 2,000 files
    python bench/cache_build.py           # 20,000 files
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from data_pipeline import KINDS, write_files

from compkit.cache import resized_images

KIND = KINDS[0]  # cifar png 32


def plain_build(paths: list[Path], target: Path) -> np.ndarray:
    """The hand-written cache: one loop, one array, one np.save."""
    images = np.empty((len(paths), KIND.size, KIND.size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        images[index] = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.save(target / "images.npy", images)
    return images


def compkit_build(paths: list[Path], target: Path) -> np.ndarray:
    return resized_images(paths, KIND.size, target, progress=False)


def timed(build: Callable[[list[Path], Path], np.ndarray], paths: list[Path], folder: Path) -> tuple:
    """(wall s, CPU s of every thread, the images) of one build into an empty ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    wall, cpu = time.perf_counter(), time.process_time()
    images = build(paths, folder)
    return time.perf_counter() - wall, time.process_time() - cpu, images


def measure(paths: list[Path], scratch: Path, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds of each build, alternated, after one checked warm-up of each."""
    sides = {"compkit": compkit_build, "plain loop": plain_build}
    results = {name: timed(build, paths, scratch / name)[2] for name, build in sides.items()}
    assert np.array_equal(results["compkit"], results["plain loop"]), "the two caches differ"
    times = {name: ([], []) for name in sides}
    for repeat in range(repeats):
        for name in sides if repeat % 2 == 0 else reversed(sides):  # cancel drift
            wall, cpu, _ = timed(sides[name], paths, scratch / name)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    return times


def print_table(times: dict[str, tuple[list[float], list[float]]], count: int) -> None:
    (our_wall, our_cpu), (plain_wall, plain_cpu) = times["compkit"], times["plain loop"]
    wall_ratio = statistics.median(p / o for o, p in zip(our_wall, plain_wall, strict=True))
    cpu_ratio = statistics.median(o / p for o, p in zip(our_cpu, plain_cpu, strict=True))
    print(f"\nCache build, {count:,} {KIND.name} files: median of {len(our_wall)} alternated builds")
    print(f"{'build':<12}{'files/s':>10}{'CPU us/file':>13}")
    for name, (wall, cpu) in times.items():
        print(
            f"{name:<12}{count / statistics.median(wall):>10,.0f}{statistics.median(cpu) / count * 1e6:>13.1f}"
        )
    print(f"speed compkit/plain {wall_ratio:.2f}x   CPU per file compkit/plain {cpu_ratio:.2f}x "
          "(medians of per-pair ratios)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 files instead of 20,000")
    quick = parser.parse_args().quick
    count, repeats = (KIND.quick_count, 5) if quick else (KIND.full_count, 7)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_files(Path(folder) / "files", KIND, count)
        print_table(measure(paths, Path(folder) / "caches", repeats), count)


if __name__ == "__main__":
    main()
