"""What the Engine costs: Engine.fit's training epoch against a plain hand-written PyTorch loop.

Same model, data, batch size and optimizer, measured in the same process, alternating, median of
repeats after a warm-up. "compute": batches already on the device; "end-to-end": a DataLoader over
uint8 images in memory (make_loader for the Engine, a plain DataLoader for the loop); "transforms":
the same with a competition's own albumentations train transforms per sample (the cifar10 plugin's:
pad, random crop, flip, normalise) through compkit's ArrayDataset, which make_loader seeds per sample,
against a plain Dataset calling the same Compose under a plain DataLoader (no seeding at all).

    python bench/engine_overhead.py --quick   # this CPU: a small conv net on 32x32 images, float32
    python bench/engine_overhead.py           # a GPU: timm resnet18 at 224 px, bf16, channels_last
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _common import small_net
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compkit import engine


@dataclass(frozen=True)
class Size:
    image_size: int
    batch_size: int
    batches: int  # per epoch
    repeats: int
    amp: str
    channels_last: bool
    num_workers: int


QUICK = Size(
    image_size=32, batch_size=64, batches=12, repeats=15, amp="off", channels_last=False, num_workers=0
)
FULL = Size(
    image_size=224, batch_size=256, batches=20, repeats=5, amp="bf16", channels_last=True, num_workers=-1
)


MODES = ("compute", "end-to-end", "transforms")


class Images(Dataset):
    """Item: image float32 (3, S, S) in [0, 1] from a uint8 store, target int64 of 10 classes."""

    def __init__(self, count: int, image_size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(
            0, 256, (count, 3, image_size, image_size), dtype=torch.uint8, generator=generator
        )
        self.targets = torch.randint(0, 10, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index].float() / 255, "target": self.targets[index]}


def cifar_train_transform(size: int):
    """The cifar10 plugin's train transforms: zero-pad by size/8, random crop back, flip, normalise."""
    import albumentations as A
    import cv2

    padded = size + 2 * (size // 8)
    return A.Compose([A.PadIfNeeded(padded, padded, border_mode=cv2.BORDER_CONSTANT, fill=0),
                      A.RandomCrop(size, size), A.HorizontalFlip(p=0.5),
                      A.Normalize(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))])


class PlainAugmented(Dataset):
    """What a competitor writes: uint8 (N, S, S, 3) images through an albumentations Compose per item."""

    def __init__(self, images, targets, transform) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.transform(image=self.images[index])["image"]
        return {"image": torch.from_numpy(image.transpose(2, 0, 1)), "target": torch.tensor(int(self.targets[index]))}


def resnet18() -> nn.Module:
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=10)


def device_batches(dataset: Images, size: Size, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The whole epoch already on the device: what is left to time is the training step itself."""
    batches = []
    for start in range(0, size.batches * size.batch_size, size.batch_size):
        items = [dataset[i] for i in range(start, start + size.batch_size)]
        batches.append({key: torch.stack([item[key] for item in items]).to(device) for key in items[0]})
    return batches


def plain_loader(dataset: Images, size: Size, device: torch.device) -> DataLoader:
    workers = engine.default_workers() if size.num_workers < 0 else size.num_workers
    on_cuda = device.type == "cuda"
    return DataLoader(
        dataset,
        batch_size=size.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=on_cuda,
        persistent_workers=on_cuda and workers > 0,
    )


def plain_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader, size: Size, device) -> float:
    """A hand-written training epoch, as a careful competitor writes it; returns images per second."""
    dtype = torch.bfloat16 if size.amp == "bf16" and device.type == "cuda" else None
    memory_format = (
        torch.channels_last if size.channels_last and device.type == "cuda" else torch.preserve_format
    )
    model.train()
    total, images = torch.zeros((), device=device), 0
    started = time.perf_counter()
    for batch in loader:
        inputs = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
        target = batch["target"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(inputs), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
        images += len(inputs)
    total.item()  # waits for the GPU
    return images / (time.perf_counter() - started)


def engine_epoch(trainer: engine.Engine, loader, valid) -> float:
    """One Engine.fit epoch (one tiny validation batch, no files), timed from outside; images per second."""
    started = time.perf_counter()
    trainer.fit(loader, valid, epochs=1, score=lambda targets, probabilities: 0.0)
    return len(loader) * loader_batch_size(loader) / (time.perf_counter() - started)


def loader_batch_size(loader) -> int:
    return loader.batch_size if isinstance(loader, DataLoader) else len(loader[0]["image"])


def measure(size: Size, factory, device: torch.device, mode: str) -> tuple[float, float, float]:
    """(median Engine images/s, median plain-loop images/s, median of the per-pair Engine/plain ratios)."""
    torch.manual_seed(0)
    reference = factory()
    memory_format = (
        torch.channels_last if size.channels_last and device.type == "cuda" else torch.preserve_format
    )
    plain_model = copy.deepcopy(reference).to(device, memory_format=memory_format)
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9)
    engine_model = copy.deepcopy(reference)
    engine_optimizer = torch.optim.SGD(engine_model.parameters(), lr=0.01, momentum=0.9)
    trainer = engine.Engine(
        engine_model,
        nn.CrossEntropyLoss(),
        engine_optimizer,
        device=device,
        amp=size.amp,
        channels_last=size.channels_last,
        quiet=True,
    )
    dataset = Images(size.batches * size.batch_size, size.image_size)
    side = size.image_size
    valid = [
        {
            "image": torch.rand(1, 3, side, side, device=device),
            "target": torch.zeros(1, dtype=torch.long, device=device),
        }
    ]
    if mode == "transforms":
        from compkit.datasets import ArrayDataset

        images = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()
        targets = dataset.targets.numpy()
        engine_data = engine.make_loader(
            ArrayDataset(images, targets, cifar_train_transform(side)), batch_size=size.batch_size, train=True,
            num_workers=size.num_workers, device=device,
        )
        plain_data = plain_loader(PlainAugmented(images, targets, cifar_train_transform(side)), size, device)
    elif mode == "end-to-end":
        engine_data = engine.make_loader(
            dataset, batch_size=size.batch_size, train=True, num_workers=size.num_workers, device=device
        )
        plain_data = plain_loader(dataset, size, device)
    else:
        engine_data = plain_data = device_batches(dataset, size, device)
    plain_epoch(plain_model, plain_optimizer, plain_data, size, device)  # warm-up: kernels, workers, caches
    engine_epoch(trainer, engine_data, valid)
    engine_rates, plain_rates = [], []
    for repeat in range(size.repeats):
        order = ("plain", "engine") if repeat % 2 == 0 else ("engine", "plain")  # cancel drift
        for which in order:
            if which == "plain":
                plain_rates.append(plain_epoch(plain_model, plain_optimizer, plain_data, size, device))
            else:
                engine_rates.append(engine_epoch(trainer, engine_data, valid))
    # Neighbouring runs share the machine's load of the moment, so their ratio is steadier than the medians.
    ratios = [mine / theirs for mine, theirs in zip(engine_rates, plain_rates, strict=True)]
    return statistics.median(engine_rates), statistics.median(plain_rates), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the CPU size: a small conv net on 32x32 images")
    args = parser.parse_args()
    size, factory = (QUICK, small_net) if args.quick else (FULL, resnet18)
    if args.quick:
        torch.set_num_threads(1)  # on a small shared CPU one thread is far less noisy than several
    device = engine.resolve_device("cpu" if args.quick else "auto")
    name = "small conv net, 32 px" if args.quick else "timm resnet18, 224 px"
    print(f"device {device}  {name}  batch {size.batch_size}  amp {size.amp}  {size.batches} batches/epoch")
    rows = [(mode, *measure(size, factory, device, mode)) for mode in MODES]
    print(f"\n{'data':<12}{'Engine img/s':>14}{'plain img/s':>14}{'Engine/plain':>14}{'overhead':>10}")
    for mode, engine_rate, plain_rate, ratio in rows:
        print(f"{mode:<12}{engine_rate:>14,.0f}{plain_rate:>14,.0f}{ratio:>14.3f}{1 - ratio:>10.1%}")


if __name__ == "__main__":
    main()
