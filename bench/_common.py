"""What several benchmarks share: CIFAR-sized data, a small conv net, the CIFAR ResNet-18, a steadier allocator."""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass

import numpy as np
from torch import nn

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's channel statistics
STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Size:
    count: int
    batch_size: int
    repeats: int
    amp: str
    channels_last: bool
    num_workers: int  # -1: default_workers()


def cifar_like(count: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 32, 32, 3) as the CIFAR cache holds them, int64 targets (N,) of 10 classes."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count)


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def resnet18_cifar() -> nn.Module:
    """The cifar10 plugin's ResNet-18 (3x3 stride-1 stem, no max-pool), or the same built from timm."""
    try:
        from compkit_cifar10.model import resnet18_cifar as build

        return build(None, 10)
    except ImportError:
        import timm

        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory in the process rather than hand big blocks back to the OS at once.

    By default a freed block of a few MB is unmapped and the next batch faults its pages in again.
    Whether that happens depends on the order of allocations, so two loops doing the same work differed
    here by 0.2-0.4 s of page faults per pass; with this, neither pays them and the ratio is the code's.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
