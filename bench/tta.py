"""Benchmark: cost of TTA with k views against k plain predictions of a small conv net.

Both sides run the same model on the same batch in the same run; the ratio TTA / one plain
prediction should be within 10% of k (the views' flips and inversions are cheap next to the model).
Prints a table last.

    python bench/tta.py --quick     # CPU, small batch
    python bench/tta.py             # CUDA if available, larger batch and images
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from compkit import tta

MODES = ("hflip", "flips", "d4")


def small_net(dense: bool) -> nn.Module:
    """A few 3x3 convolutions; a [B, 1, H, W] map if ``dense`` else [B, 10] logits."""
    body = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()]
    head = [nn.Conv2d(32, 1, 1)] if dense else [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    return nn.Sequential(*body, *head).eval()


def probabilities_fn(model: nn.Module, dense: bool):
    def predict(images: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        return torch.sigmoid(logits) if dense else logits.softmax(dim=1)

    return predict


def elapsed(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def paired_ms(fn, images: torch.Tensor, views, repeats: int, dense: bool) -> tuple[float, float]:
    """Median ms of k plain predictions and of one k-view TTA prediction, measured alternately so
    that load from other processes falls on both sides alike."""
    plain, merged = [], []
    for _ in range(repeats):
        plain.append(elapsed(lambda: [fn(images) for _ in views], images.device))
        merged.append(elapsed(lambda: tta.predict(fn, images, views, dense=dense), images.device))
    return statistics.median(plain) * 1e3, statistics.median(merged) * 1e3


def measure(device: torch.device, batch: int, size: int, repeats: int) -> list:
    """Table rows (task, mode, k, k plain ms, TTA ms)."""
    images = torch.rand(batch, 3, size, size, device=device)
    rows = []
    for dense in (False, True):
        fn = probabilities_fn(small_net(dense).to(device), dense)
        with torch.inference_mode():
            for mode in MODES:
                views = tta.views(mode)
                paired_ms(fn, images, views, 2, dense)  # warm-up: allocator, cuDNN algorithm choice
                plain_ms, tta_ms = paired_ms(fn, images, views, repeats, dense)
                task = "segmentation" if dense else "classification"
                rows.append((task, mode, len(views), plain_ms, tta_ms))
    return rows


def print_table(rows: list, device: torch.device, batch: int, size: int) -> None:
    print(f"\nTTA cost on {device.type}, batch {batch} of 3x{size}x{size}, median ms")
    print(f"{'task':<16}{'mode':<7}{'k':>3}{'k plain ms':>12}{'TTA ms':>10}{'TTA / one plain':>17}{'/ k':>7}")
    for task, mode, k, plain_ms, tta_ms in rows:
        ratio = tta_ms / plain_ms * k
        print(f"{task:<16}{mode:<7}{k:>3}{plain_ms:>12.1f}{tta_ms:>10.1f}{ratio:>17.2f}{ratio / k:>7.2f}")
    print("target: TTA / one plain prediction within 10% of k (/ k between 0.90 and 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU, small batch, few repeats")
    quick = parser.parse_args().quick
    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    batch, size, repeats = (8, 64, 11) if quick else (32, 256, 21)
    if device.type == "cpu":
        # One thread: on a shared CPU a second thread waiting for a busy core swamps the signal.
        torch.set_num_threads(1)
    torch.manual_seed(0)
    print_table(measure(device, batch, size, repeats), device, batch, size)


if __name__ == "__main__":
    main()
