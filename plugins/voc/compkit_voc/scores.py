"""What a fold's report prints: mean IoU and pixel accuracy (the core's metrics) and each class's IoU."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_ious(targets: np.ndarray, predictions: np.ndarray, classes: int, ignore_index: int) -> np.ndarray:
    """float64 (classes,): each class's intersection over union over all scored pixels (the core's pixel
    confusion matrix), NaN for a class neither in the targets nor predicted."""
    from compkit.metrics import pixel_confusion

    matrix = pixel_confusion(targets, predictions, ignore_index, num_classes=classes)
    overlap = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, overlap / union, np.nan)


def report(targets: np.ndarray, predictions: np.ndarray, names: Sequence[str], ignore_index: int) -> str:
    """Mean IoU, pixel accuracy and the IoU of each class present, from class maps (N, H, W) or
    probabilities (N, C, H, W) against targets (N, H, W)."""
    from compkit.metrics import miou, pixel_accuracy

    ious = class_ious(targets, predictions, len(names), ignore_index)
    lines = [f"out-of-fold mIoU {miou(targets, predictions, ignore_index):.5f}, pixel accuracy "
             f"{pixel_accuracy(targets, predictions, ignore_index):.5f} on {len(targets)} images",
             "IoU per class (those in the targets or predicted):"]
    width = max(len(name) for name in names)
    lines += [f"  {name:<{width}}  {iou:.4f}" for name, iou in zip(names, ious) if not np.isnan(iou)]
    return "\n".join(lines)
