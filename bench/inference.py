"""Benchmark: test-time inference images/s of compkit's prediction path against a plain hand-written loop.

compkit: make_loader over an ArrayDataset of uint8 CIFAR-sized images (albumentations Normalize) and
Engine.predict without TTA. Peer: model.eval, torch.inference_mode, a plain DataLoader over a Dataset
that normalises in numpy, softmax, cat. Same model, data and batch size, in the same process,
alternating, medians after a warm-up. "data only": the loaders alone, no model; "compute": normalised
batches already on the device; "end-to-end": loaders and model.

    python bench/inference.py --quick   # this CPU: a small conv net, 3,072 images, float32
    python bench/inference.py           # a GPU: resnet18-cifar, 300,000 images, bf16, channels_last
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import albumentations as A
import numpy as np
import torch
from _common import MEAN, STD, Size, cifar_like, keep_freed_memory, resnet18_cifar, small_net
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compkit import engine
from compkit.datasets import ArrayDataset

QUICK = Size(count=3072, batch_size=64, repeats=7, amp="off", channels_last=False, num_workers=0)
FULL = Size(count=300_000, batch_size=1024, repeats=3, amp="bf16", channels_last=True, num_workers=-1)


MODES = ("data only", "compute", "end-to-end")


class PlainImages(Dataset):
    """A hand-written test Dataset: uint8 (H, W, 3) -> normalised float32 tensor [3, H, W]."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.mean = np.asarray(MEAN, dtype=np.float32) * 255
        self.std = np.asarray(STD, dtype=np.float32) * 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = (self.images[index].astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(image.transpose(2, 0, 1).copy())


def workers(size: Size) -> int:
    return engine.default_workers() if size.num_workers < 0 else size.num_workers


def compkit_loader(images: np.ndarray, size: Size, device: torch.device) -> DataLoader:
    dataset = ArrayDataset(images, None, A.Compose([A.Normalize(mean=MEAN, std=STD)]))
    return engine.make_loader(
        dataset, batch_size=size.batch_size, train=False, num_workers=size.num_workers, device=device
    )


def plain_loader(images: np.ndarray, size: Size, device: torch.device) -> DataLoader:
    """As a careful competitor writes it: in order, pinned and persistent workers on CUDA."""
    count, on_cuda = workers(size), device.type == "cuda"
    return DataLoader(
        PlainImages(images),
        batch_size=size.batch_size,
        num_workers=count,
        pin_memory=on_cuda,
        persistent_workers=on_cuda and count > 0,
    )


def device_batches(images: np.ndarray, size: Size, device: torch.device) -> list[torch.Tensor]:
    """The whole test set normalised and on the device: what is left to time is the model."""
    dataset = PlainImages(images)
    batches = []
    for start in range(0, len(images), size.batch_size):
        stop = min(start + size.batch_size, len(images))
        batches.append(torch.stack([dataset[i] for i in range(start, stop)]).to(device))
    return batches


def plain_predict(model: nn.Module, batches, size: Size, device: torch.device) -> torch.Tensor:
    """The hand-written loop: float32 probabilities [N, 10] on the CPU."""
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if size.channels_last and on_cuda else torch.preserve_format
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if size.amp == "bf16" and on_cuda
        else contextlib.nullcontext()
    )
    model.eval()
    outputs = []
    with torch.inference_mode(), autocast:
        for images in batches:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            outputs.append(model(images).float().softmax(dim=1))
    return torch.cat(outputs).cpu()


def timed(function: Callable[[], object], count: int) -> tuple[float, object]:
    """(images per second, the result) of one call that handles ``count`` images."""
    started = time.perf_counter()
    result = function()
    return count / (time.perf_counter() - started), result


def drain(loader) -> int:
    """Images in one pass over ``loader``, with nothing done to them: the data path alone."""
    return sum(len(batch["image"] if isinstance(batch, dict) else batch) for batch in loader)


def sides(mode: str, model: nn.Module, images: np.ndarray, size: Size, device) -> tuple[Callable, Callable]:
    """(compkit's run, the plain run) for ``mode``; each returns what it produced."""
    if mode == "data only":
        ours, theirs = compkit_loader(images, size, device), plain_loader(images, size, device)
        return lambda: drain(ours), lambda: drain(theirs)
    trainer = engine.Engine(model, activation="softmax", device=device, amp=size.amp,
                            channels_last=size.channels_last, quiet=True)  # fmt: skip
    if mode == "end-to-end":
        ours, theirs = compkit_loader(images, size, device), plain_loader(images, size, device)
    else:
        theirs = device_batches(images, size, device)
        ours = [{"image": batch} for batch in theirs]
    return lambda: trainer.predict(ours), lambda: plain_predict(model, theirs, size, device)


def measure(model: nn.Module, images: np.ndarray, size: Size, device, mode: str) -> tuple:
    """(median compkit img/s, median plain img/s, median per-pair ratio) for one mode."""
    compkit_run, plain_run = sides(mode, model, images, size, device)
    count = len(images)
    _, plain_result = timed(plain_run, count)  # warm-up: kernels, allocator, workers
    _, compkit_result = timed(compkit_run, count)
    check_agreement(compkit_result, plain_result, size)
    compkit_rates, plain_rates = [], []
    for repeat in range(size.repeats):
        order = (plain_run, compkit_run) if repeat % 2 == 0 else (compkit_run, plain_run)  # cancel drift
        for run in order:
            rates = plain_rates if run is plain_run else compkit_rates
            rates.append(timed(run, count)[0])
    ratios = [mine / other for mine, other in zip(compkit_rates, plain_rates, strict=True)]
    return statistics.median(compkit_rates), statistics.median(plain_rates), statistics.median(ratios)


def check_agreement(compkit_result, plain_result, size: Size) -> None:
    """Both paths see every image once, and predict the same probabilities in the same order."""
    if isinstance(compkit_result, int):  # data only: image counts
        assert compkit_result == plain_result, (compkit_result, plain_result)
        return
    tolerance = 1e-4 if size.amp == "off" else 2e-2  # bf16 kernels may differ between batchings
    assert compkit_result.shape == tuple(plain_result.shape), (compkit_result.shape, plain_result.shape)
    assert np.allclose(compkit_result, plain_result.numpy(), atol=tolerance), "the two paths disagree"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the CPU size: a small conv net, 3,072 images")
    quick = parser.parse_args().quick
    keep_freed_memory()
    size, factory = (QUICK, small_net) if quick else (FULL, resnet18_cifar)
    if quick:
        torch.set_num_threads(1)  # on a small shared CPU one thread is far less noisy than several
    device = engine.resolve_device("cpu" if quick else "auto")
    torch.manual_seed(0)
    model = factory()
    images, _ = cifar_like(size.count)
    name = "small conv net" if quick else "resnet18-cifar"
    print(f"device {device}  {name}  {size.count:,} images 3x32x32  batch {size.batch_size}  amp {size.amp}  "
          f"channels_last {size.channels_last}  workers {workers(size)}")  # fmt: skip
    rows = [(mode, *measure(model, images, size, device, mode)) for mode in MODES]
    print(f"\nInference, no TTA, {device.type}: images/s, median; ratio = median of per-pair ratios")
    print(f"{'data':<12}{'compkit img/s':>15}{'plain img/s':>13}{'compkit/plain':>15}{'compkit µs/img':>16}"
          f"{'plain µs/img':>14}")  # fmt: skip
    for mode, ours, theirs, ratio in rows:
        print(
            f"{mode:<12}{ours:>15,.0f}{theirs:>13,.0f}{ratio:>15.3f}{1e6 / ours:>16.1f}{1e6 / theirs:>14.1f}"
        )


if __name__ == "__main__":
    main()
