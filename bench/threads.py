"""Benchmark: a U-Net training step with DataLoader workers, torch's default threads against compkit's choice.

torch starts one intra-op thread per core in the main process, and DataLoader workers then compete
with them for the same cores; OpenMP threads wait at each barrier for a descheduled sibling, so a
step can take many times longer. compkit's loaders give each worker one thread and the main process
its share of the usable cores (``compkit.loaders.choose_threads``; ``max(1, cores - workers)`` was
measured here and not adopted, see bench/RESULTS.md). Both sides train the same
U-Net (segmentation_models_pytorch, ResNet-18 encoder, random weights) on the same SIIM-like data
(grayscale images and masks, albumentations flip/affine/contrast and a resize per sample in the
workers); "default" iterates a plain DataLoader with torch's default threads,
"compkit" iterates ``make_loader``, which sets the threads itself. Same process, alternating epochs,
median step time after each epoch's first steps (worker start-up); a table is printed last. Two
kinds of data: cached arrays (the workers are idle most of a step) and PNGs decoded per access (busy).

    python bench/threads.py --quick   # this CPU: 96 px, batch 4, 8 steps an epoch, 3 epochs a side
    python bench/threads.py           # 256 px, batch 8, 16 steps, 5 epochs
    python bench/threads.py --quick --busy 1   # with one core kept busy by another process
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compkit import loaders

STARTING_THREADS = torch.get_num_threads()  # torch's default, before anything changes it
WARM_UP_STEPS = 2  # per epoch: workers starting, first batches


@dataclass(frozen=True)
class Size:
    image_size: int
    batch_size: int
    steps: int
    epochs: int


QUICK = Size(image_size=96, batch_size=4, steps=8, epochs=3)
FULL = Size(image_size=256, batch_size=8, steps=16, epochs=5)


class Scans(Dataset):
    """SIIM-like items: ``{"image": float32 [1, S, S], "target": float32 [1, S, S]}``, augmented.

    ``decode``: each image is a 1024 px PNG decoded on every access (~7 ms, as SIIM's files), so the
    workers are busy for much of each step; otherwise uint8 512 px arrays in memory (a cache), so they
    are idle for most of it.
    """

    def __init__(self, count: int, size: int, decode: bool) -> None:
        rng = np.random.default_rng(0)
        side = 1024 if decode else 512
        coarse = rng.integers(0, 256, (count, 8, 8)).astype(np.float32)
        images = [cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC) for image in coarse]
        images = [np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8) for image in images]
        self.masks = [(image > 180).astype(np.uint8) for image in images]
        self.images = [cv2.imencode(".png", image)[1] for image in images] if decode else images
        self.decode = decode
        self.transform = A.Compose([
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-10, 10), p=0.5),
            A.RandomBrightnessContrast(p=0.5),
            A.Resize(size, size, interpolation=cv2.INTER_AREA),
            A.Normalize(mean=(0.5,), std=(0.25,)),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = cv2.imdecode(self.images[index], cv2.IMREAD_GRAYSCALE) if self.decode else self.images[index]
        out = self.transform(image=image, mask=self.masks[index])
        return {
            "image": torch.from_numpy(out["image"])[None],
            "target": torch.from_numpy(out["mask"])[None].float(),
        }


def unet() -> nn.Module:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)


def epoch_step_times(model: nn.Module, optimizer, loader) -> tuple[list[float], int]:
    """Seconds per training step (waiting for the batch included) and the torch threads in use."""
    model.train()
    times, started = [], time.perf_counter()
    for batch in loader:
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch["image"]), batch["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        times.append(now - started)
        started = now
    return times[WARM_UP_STEPS:], torch.get_num_threads()


def default_loader(dataset: Dataset, size: Size, workers: int) -> DataLoader:
    torch.set_num_threads(STARTING_THREADS)  # what a process has unless someone chooses
    return DataLoader(dataset, batch_size=size.batch_size, shuffle=True, drop_last=True, num_workers=workers)


def compkit_loader(dataset: Dataset, size: Size, workers: int) -> DataLoader:
    return loaders.make_loader(
        dataset, batch_size=size.batch_size, train=True, num_workers=workers, device="cpu"
    )


def measure(size: Size, workers: int, decode: bool) -> dict[str, tuple[float, int]]:
    """Median step seconds and threads per side, after one warm-up epoch of each."""
    dataset = Scans(size.batch_size * size.steps, size.image_size, decode)
    model = unet()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sides = {"default": default_loader, "compkit": compkit_loader}
    for make in sides.values():
        epoch_step_times(model, optimizer, make(dataset, size, workers))
    times, threads = {name: [] for name in sides}, {}
    for epoch in range(size.epochs):
        for name in sides if epoch % 2 == 0 else reversed(sides):  # cancel drift
            steps, threads[name] = epoch_step_times(model, optimizer, sides[name](dataset, size, workers))
            times[name] += steps
    return {name: (statistics.median(times[name]), threads[name]) for name in sides}


@contextlib.contextmanager
def busy(count: int):
    """``count`` processes spinning on a core each while the block runs: a machine other people load."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="96 px, batch 4, 8 steps, 3 epochs a side")
    parser.add_argument(
        "--workers", type=int, default=-1, help="DataLoader workers (default: default_workers())"
    )
    parser.add_argument("--busy", type=int, default=0, help="spinning processes to load the machine with")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    workers = loaders.default_workers() if args.workers < 0 else args.workers
    cores = loaders.usable_cores()
    print(f"U-Net ResNet-18 {size.image_size} px, batch {size.batch_size}, {workers} workers, {cores} usable cores, "
          f"{args.busy} spinning processes")  # fmt: skip
    with busy(args.busy):
        rows = [
            (name, measure(size, workers, decode))
            for name, decode in [("cached 512", False), ("png 1024", True)]
        ]
    print(
        f"\nTraining step with {workers} DataLoader workers on {cores} cores, {args.busy} spinning: "
        "median seconds per step"
    )
    print(f"{'data':<12}{'default threads':>16}{'s / step':>10}{'compkit threads':>17}{'s / step':>10}"
          f"{'default/compkit':>17}")  # fmt: skip
    for name, result in rows:
        (default_s, default_threads), (compkit_s, compkit_threads) = result["default"], result["compkit"]
        print(f"{name:<12}{default_threads:>16}{default_s:>10.3f}{compkit_threads:>17}{compkit_s:>10.3f}"
              f"{default_s / compkit_s:>16.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
