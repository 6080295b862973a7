"""Benchmark: training images/s of the gpu_data path against compkit's ordinary DataLoader path.

gpu_data: compkit.gpu_data.DeviceLoader (uint8 images on the device, crop and flip per batch there)
feeding Engine.fit for one epoch. DataLoader: ArrayDataset + albumentations PadIfNeeded/RandomCrop/
HorizontalFlip/Normalize + make_loader, the same Engine. Same CIFAR-sized uint8 data, batch size and
model, same process, alternating, medians. "compute only" (batches made beforehand, on the device) is
the ceiling both approach; "data only" iterates each loader without a model. A table is printed last,
with the seed's GPU figure beside the full run's.

    python bench/gpu_data.py --quick   # this CPU: a small conv net, 2,048 images, float32
    python bench/gpu_data.py           # a GPU: resnet18-cifar, 50,000 images, bf16, channels_last
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import albumentations as A
import cv2
import numpy as np
import torch
from _common import MEAN, STD, Size, cifar_like, keep_freed_memory, resnet18_cifar, small_net
from torch import nn

from compkit import engine
from compkit.datasets import ArrayDataset
from compkit.gpu_data import DeviceLoader

SEED_ANCHOR = 1383  # images/s: the seed's ResNet-18 on CIFAR-10, one GPU, data loading left out (facts)
PATHS = ("compute only", "gpu_data", "DataLoader")
LOADERS = PATHS[1:]  # the two that load data (compute only iterates a list)


QUICK = Size(count=2048, batch_size=64, repeats=5, amp="off", channels_last=False, num_workers=0)
FULL = Size(count=50_000, batch_size=256, repeats=3, amp="bf16", channels_last=True, num_workers=-1)


def train_transform() -> A.Compose:
    """The cifar10 plugin's training recipe: 4 px zero padding, random 32 px crop, flip, normalise."""
    return A.Compose(
        [
            A.PadIfNeeded(40, 40, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(32, 32),
            A.HorizontalFlip(p=0.5),
            A.Normalize(mean=MEAN, std=STD),
        ]
    )


def loaders(images: np.ndarray, targets: np.ndarray, size: Size, device: torch.device) -> dict:
    """The three data paths' training loaders, keyed by PATHS."""
    dataset = ArrayDataset(images, targets, train_transform())
    ordinary = engine.make_loader(
        dataset, batch_size=size.batch_size, train=True, num_workers=size.num_workers, device=device
    )
    on_device = DeviceLoader(images, targets, batch_size=size.batch_size, mean=MEAN, std=STD, device=device)
    plain = ArrayDataset(images, targets, A.Compose([A.Normalize(mean=MEAN, std=STD)]))
    batches = []
    for start in range(0, len(plain) - size.batch_size + 1, size.batch_size):
        items = [plain[i] for i in range(start, start + size.batch_size)]
        batches.append({key: torch.stack([item[key] for item in items]).to(device) for key in items[0]})
    return {"compute only": batches, "gpu_data": on_device, "DataLoader": ordinary}


def engine_for(model: nn.Module, size: Size, device: torch.device) -> engine.Engine:
    """An Engine training its own copy of ``model`` with SGD, as the cifar10 plugin does."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return engine.Engine(model, nn.CrossEntropyLoss(), optimizer, device=device, amp=size.amp,
                         channels_last=size.channels_last, quiet=True)  # fmt: skip


def epoch_rate(trainer: engine.Engine, loader, valid: list) -> float:
    """One Engine.fit epoch (one tiny validation batch, no files), timed from outside; images per second."""
    batch_size = len(loader[0]["image"]) if isinstance(loader, list) else loader.batch_size
    started = time.perf_counter()
    trainer.fit(loader, valid, epochs=1, score=lambda targets, probabilities: 0.0)
    return len(loader) * batch_size / (time.perf_counter() - started)


def data_rate(loader, device: torch.device) -> float:
    """One pass over ``loader`` alone, no model, each batch moved to the device; images per second."""
    started = time.perf_counter()
    count = sum(len(batch["image"].to(device, non_blocking=True)) for batch in loader)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - started)


def measure(model: nn.Module, size: Size, device: torch.device) -> dict[str, tuple]:
    """Per path: (median fit img/s, median per-round ratio to the DataLoader, to compute, data-only img/s)."""
    images, targets = cifar_like(size.count)
    data = loaders(images, targets, size, device)
    trainers = {path: engine_for(model, size, device) for path in PATHS}
    valid = [
        {
            "image": torch.rand(1, 3, 32, 32, device=device),
            "target": torch.zeros(1, dtype=torch.long, device=device),
        }
    ]
    for path in PATHS:  # warm-up: kernels, cuDNN's choice, allocator, workers
        epoch_rate(trainers[path], data[path], valid)
    rates = {path: [] for path in PATHS}
    data_only = {path: [] for path in LOADERS}
    for repeat in range(size.repeats):
        shift = repeat % len(PATHS)
        for path in PATHS[shift:] + PATHS[:shift]:  # rotate the order to cancel drift
            rates[path].append(epoch_rate(trainers[path], data[path], valid))
        for path in LOADERS if repeat % 2 == 0 else LOADERS[::-1]:
            data_only[path].append(data_rate(data[path], device))
    return {
        path: (*summary(rates, path), statistics.median(data_only[path]) if path in LOADERS else None)
        for path in PATHS
    }


def summary(rates: dict[str, list[float]], path: str) -> tuple[float, float, float]:
    """Rounds share the machine's load of the moment, so per-round ratios are steadier than medians."""

    def ratio_to(other: str) -> float:
        return statistics.median(
            mine / theirs for mine, theirs in zip(rates[path], rates[other], strict=True)
        )

    return statistics.median(rates[path]), ratio_to("DataLoader"), ratio_to("compute only")


def print_table(results: dict, device: torch.device, quick: bool) -> None:
    print(
        f"\nTraining, one Engine.fit epoch, {device.type}: images/s, median; ratios = medians of per-round ratios"
    )
    print(f"{'data path':<14}{'img/s':>10}{'/ DataLoader':>14}{'/ compute':>11}{'data only img/s':>17}")
    for path, (rate, to_loader, to_compute, data_only) in results.items():
        data_text = "-" if data_only is None else f"{data_only:,.0f}"
        print(f"{path:<14}{rate:>10,.0f}{to_loader:>13.2f}x{to_compute:>10.2f}x{data_text:>17}")
    if quick:
        print(
            f"seed anchor {SEED_ANCHOR:,} img/s is a GPU figure (ResNet-18): not comparable with this CPU run"
        )
    else:
        rate = results["gpu_data"][0]
        print(
            f"seed anchor {SEED_ANCHOR:,} img/s (d2l ResNet-18, one GPU, data loading left out); "
            f"gpu_data {rate:,.0f} img/s end-to-end = {rate / SEED_ANCHOR:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the CPU size: a small conv net, 2,048 images")
    quick = parser.parse_args().quick
    keep_freed_memory()
    size, factory = (QUICK, small_net) if quick else (FULL, resnet18_cifar)
    if quick:
        torch.set_num_threads(1)  # on a small shared CPU one thread is far less noisy than several
    device = engine.resolve_device("cpu" if quick else "auto")
    torch.manual_seed(0)
    workers = engine.default_workers() if size.num_workers < 0 else size.num_workers
    name = "small conv net" if quick else "resnet18-cifar"
    print(f"device {device}  {name}  {size.count:,} images 3x32x32  batch {size.batch_size}  amp {size.amp}  "
          f"channels_last {size.channels_last}  DataLoader workers {workers}")  # fmt: skip
    print_table(measure(factory(), size, device), device, quick)


if __name__ == "__main__":
    main()
