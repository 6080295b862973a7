"""Benchmark: compkit's image-file training data path against the seed's PIL Dataset, and the resized cache.

Part 1, decode: ImageDataset + albumentations Resize/Normalize + make_loader against the seed's Dataset
(PIL open, convert, resize, numpy -> torch, normalise) in a plain DataLoader, on the same files at the
same output size: small PNGs (CIFAR-like), 1024x1024 grayscale PNGs (SIIM-like), 2048x1365 JPEGs
(plant-pathology-like). Part 2, cache: epochs read from compkit.cache.resized_images + ArrayDataset
against decoding the files every epoch. Same process, alternating, medians; a table is printed last.

    python bench/data_pipeline.py --quick   # this CPU: few files, 0 and 2 workers, one thread each
    python bench/data_pipeline.py           # a GPU machine: more files, also default_workers()
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from _common import keep_freed_memory
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from compkit import engine
from compkit.cache import resized_images
from compkit.datasets import ArrayDataset, ImageDataset

MEAN = {3: (0.485, 0.456, 0.406), 1: (0.5,)}
STD = {3: (0.229, 0.224, 0.225), 1: (0.25,)}


@dataclass(frozen=True)
class Kind:
    """One kind of image file, the size it is trained at, and how many files each mode writes."""

    name: str
    suffix: str
    height: int
    width: int
    channels: int
    size: int  # output side
    batch_size: int
    quick_count: int
    full_count: int
    cached: bool  # part 2 measures it


KINDS = (
    Kind("cifar png 32", ".png", height=32, width=32, channels=3, size=32, batch_size=64,
         quick_count=2000, full_count=20000, cached=False),
    Kind("siim png 1024 gray", ".png", height=1024, width=1024, channels=1, size=512, batch_size=4,
         quick_count=24, full_count=256, cached=True),
    Kind("plant jpeg 2048x1365", ".jpg", height=1365, width=2048, channels=3, size=512, batch_size=4,
         quick_count=24, full_count=256, cached=True),
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# The files


def synthetic_image(rng: np.random.Generator, kind: Kind) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3): a smooth random field plus mild noise, so files compress like
    photographs (random noise would make PNGs incompressible and slower to decode than real ones)."""
    coarse = rng.integers(0, 256, (max(2, kind.height // 64), max(2, kind.width // 64), kind.channels))
    smooth = cv2.resize(coarse.astype(np.float32), (kind.width, kind.height), interpolation=cv2.INTER_CUBIC)
    smooth = smooth.reshape(kind.height, kind.width, kind.channels)
    noise = rng.integers(-6, 7, smooth.shape, dtype=np.int16)
    image = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    return image[:, :, 0] if kind.channels == 1 else image


def write_files(folder: Path, kind: Kind, count: int, seed: int = 0) -> list[Path]:
    """Write ``count`` files of ``kind`` into ``folder``; JPEGs at quality 90 as cameras save them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    options = [cv2.IMWRITE_JPEG_QUALITY, 90] if kind.suffix == ".jpg" else []
    paths = []
    for index in range(count):
        path = folder / f"{index}{kind.suffix}"
        cv2.imwrite(str(path), synthetic_image(rng, kind), options)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------
# The two data paths


class SeedDataset(Dataset):
    """The seed's Dataset: PIL open, convert, resize, numpy -> torch, normalise.

    Item: ``{"image": float32 [C, S, S], "target": int64 []}``, as compkit's.
    """

    def __init__(self, paths: list[Path], targets: np.ndarray, kind: Kind) -> None:
        self.paths, self.targets, self.size = paths, targets, kind.size
        self.mode = "L" if kind.channels == 1 else "RGB"
        self.mean = np.asarray(MEAN[kind.channels], dtype=np.float32)
        self.std = np.asarray(STD[kind.channels], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    draft = False  # DraftDataset: let libjpeg decode at a reduced scale first

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with Image.open(self.paths[index]) as image:
            if self.draft:
                image.draft(self.mode, (self.size, self.size))  # JPEG only: 1/2, 1/4 or 1/8 scale that still covers
            resized = image.convert(self.mode).resize((self.size, self.size))
        array = np.asarray(resized, dtype=np.float32) / 255
        if array.ndim == 2:
            array = array[:, :, None]
        array = (array - self.mean) / self.std
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return {"image": image, "target": torch.tensor(int(self.targets[index]))}


class DraftDataset(SeedDataset):
    """The seed's Dataset as a competent engineer speeds it up for big JPEGs: PIL's ``draft`` (reduced-size
    JPEG decode) before the resize. PNGs decode as before."""

    draft = True


def normalise(kind: Kind) -> A.Normalize:
    return A.Normalize(mean=MEAN[kind.channels], std=STD[kind.channels])


def compkit_decoding(paths: list[Path], targets: np.ndarray, kind: Kind) -> ImageDataset:
    """compkit's file path as Competition.dataset builds it: a JPEG decoded at a reduced scale that still
    covers the size, else OpenCV; albumentations Resize (INTER_AREA, as the core's default transforms) +
    Normalize, every epoch."""
    transform = A.Compose([A.Resize(kind.size, kind.size, interpolation=cv2.INTER_AREA), normalise(kind)])
    return ImageDataset(paths, targets, transform, channels=kind.channels, min_size=kind.size)


def compkit_cached(images: np.ndarray, targets: np.ndarray, kind: Kind) -> ArrayDataset:
    """compkit's cached path: the resized uint8 memmap, only Normalize left per sample."""
    return ArrayDataset(images, targets, A.Compose([normalise(kind)]))


def compkit_loader(dataset: Dataset, kind: Kind, workers: int, device: torch.device) -> DataLoader:
    return engine.make_loader(
        dataset, batch_size=kind.batch_size, train=True, num_workers=workers, device=device
    )


def seed_loader(dataset: Dataset, kind: Kind, workers: int) -> DataLoader:
    """The seed's loader: shuffled, plain, nothing pinned or persistent."""
    return DataLoader(dataset, batch_size=kind.batch_size, shuffle=True, num_workers=workers)


# ----------------------------------------------------------------------------------------------------------
# Timing


def images_per_second(loader: Iterable[dict[str, torch.Tensor]]) -> float:
    """One pass over ``loader`` (worker start-up included, as every epoch pays it); images per second."""
    started = time.perf_counter()
    count = sum(len(batch["image"]) for batch in loader)
    return count / (time.perf_counter() - started)


def paired_rates(ours: Iterable, theirs: Iterable, repeats: int) -> tuple[float, float, float]:
    """(median rate of ``ours``, of ``theirs``, median per-pair ratio) in images/s, after a warm-up of each.

    The order alternates, and neighbouring runs share the machine's load of the moment, so the
    per-pair ratio is steadier than the ratio of the medians.
    """
    images_per_second(theirs), images_per_second(ours)  # warm-up: page cache, lazy imports, first fork
    our_rates, their_rates = [], []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            their_rates.append(images_per_second(theirs))
            our_rates.append(images_per_second(ours))
        else:
            our_rates.append(images_per_second(ours))
            their_rates.append(images_per_second(theirs))
    ratios = [mine / other for mine, other in zip(our_rates, their_rates, strict=True)]
    return statistics.median(our_rates), statistics.median(their_rates), statistics.median(ratios)


def check_same_output(ours: Dataset, theirs: Dataset) -> None:
    """Both paths give an image of the same shape and dtype (the resize filters differ, so not the values)."""
    mine, other = ours[0]["image"], theirs[0]["image"]
    assert mine.shape == other.shape and mine.dtype == other.dtype, (mine.shape, other.shape)


def measure_decode(kind: Kind, paths: list[Path], workers: list[int], repeats: int, device) -> list[tuple]:
    """Rows (kind, workers, compkit img/s, peer img/s, ratio) for decoding the files every epoch, against the
    seed's PIL Dataset and, for JPEGs, against the same with PIL's reduced-size decode (``draft``)."""
    targets = np.arange(len(paths)) % 10
    ours = compkit_decoding(paths, targets, kind)
    peers = [("seed PIL", SeedDataset(paths, targets, kind))]
    if kind.suffix == ".jpg":
        peers.append(("PIL draft", DraftDataset(paths, targets, kind)))
    rows = []
    for peer, theirs in peers:
        check_same_output(ours, theirs)
        for count in workers:
            rates = paired_rates(
                compkit_loader(ours, kind, count, device), seed_loader(theirs, kind, count), repeats
            )
            rows.append((kind.name, peer, count, *rates))
    return rows


def measure_cache(
    kind: Kind, paths: list[Path], cache_dir: Path, workers: list[int], repeats: int, device
) -> list[tuple]:
    """Rows (kind, workers, cached img/s, decoding img/s, ratio, build s, open ms) for compkit's cache."""
    targets = np.arange(len(paths)) % 10
    started = time.perf_counter()
    resized_images(paths, kind.size, cache_dir, channels=kind.channels, progress=False)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    images = resized_images(paths, kind.size, cache_dir, channels=kind.channels, progress=False)  # a hit
    open_ms = (time.perf_counter() - started) * 1e3
    cached, decoding = compkit_cached(images, targets, kind), compkit_decoding(paths, targets, kind)
    check_same_output(cached, decoding)
    rows = []
    for count in workers:
        rates = paired_rates(
            compkit_loader(cached, kind, count, device),
            compkit_loader(decoding, kind, count, device),
            repeats,
        )
        rows.append((kind.name, count, *rates, build_seconds, open_ms))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Report


def print_tables(decode_rows: list[tuple], cache_rows: list[tuple], title: str) -> None:
    print(f"\nData pipeline, {title}: images/s per epoch, median; ratio = median of per-pair ratios")
    print(f"{'files':<22}{'peer':<10}{'workers':>8}{'compkit':>10}{'peer':>10}{'compkit/peer':>14}")
    for name, peer, workers, ours, theirs, ratio in decode_rows:
        print(f"{name:<22}{peer:<10}{workers:>8}{ours:>10,.0f}{theirs:>10,.0f}{ratio:>13.2f}x")
    print(
        f"{'cache':<22}{'workers':>8}{'cached':>10}{'decoding':>10}{'cached/dec.':>14}{'build s':>9}{'open ms':>9}"
    )
    for name, workers, ours, theirs, ratio, build_seconds, open_ms in cache_rows:
        print(
            f"{name:<22}{workers:>8}{ours:>10,.0f}{theirs:>10,.0f}{ratio:>13.1f}x{build_seconds:>9.2f}{open_ms:>9.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="this CPU: few files, 0 and 2 workers")
    quick = parser.parse_args().quick
    keep_freed_memory()
    repeats = 7 if quick else 3  # full epochs are longer, so steadier, and must fit in minutes
    workers = [0, 2] if quick else sorted({0, 2, engine.default_workers()})
    device = engine.resolve_device("cpu" if quick else "auto")  # on CUDA make_loader pins and keeps workers
    if quick:
        # One thread per process: on a small shared CPU a second thread waiting for a busy core swamps
        # the signal. The workers inherit both settings.
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    decode_rows, cache_rows = [], []
    with tempfile.TemporaryDirectory(prefix="compkit-bench-") as folder:
        for kind in KINDS:
            count = kind.quick_count if quick else kind.full_count
            print(f"writing {count} {kind.name} files ...", flush=True)
            place = Path(folder) / kind.name.replace(" ", "-")
            paths = write_files(place / "files", kind, count)
            decode_rows += measure_decode(kind, paths, workers, repeats, device)
            if kind.cached:
                cache_rows += measure_cache(kind, paths, place / "cache", workers, repeats, device)
    title = f"{'quick' if quick else 'full'}, {device.type}, {'1 thread per process' if quick else 'default threads'}"
    print_tables(decode_rows, cache_rows, title)
    print("output: 32 px for the small PNGs, 512 px for the others; seed = PIL default (bicubic) resize; compkit "
          "= reduced-scale JPEG decode where one covers, else OpenCV, then INTER_AREA; PIL draft = libjpeg's reduced-scale decode, then bicubic")


if __name__ == "__main__":
    main()
