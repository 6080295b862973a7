"""Multi-class segmentation: one class per pixel, a softmax over the classes, (N, C, H, W) probabilities.

Targets are int64 [H, W] class indices with an ignore index (``Competition.ignore_index``, 255 by
default, as VOC's borders). Losses ``ce`` (ignore index honoured) and ``dice`` (smp's multi-class Dice);
metrics ``miou`` and ``pixel_accuracy`` (``compkit.metrics``). Out-of-fold predictions are stored as
uint8 class indices, not probabilities: 1 byte a pixel for the prediction and 1 for the target,
whatever the number of classes (21 float16 maps would be 42), and the metrics need only the argmax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compkit.errors import CompkitError
from compkit.tasks.base import Task
from compkit.tasks.classification import _shape

if TYPE_CHECKING:
    import torch

    from compkit.competition import Competition

MAX_CLASSES = 255  # class indices and the ignore index share a uint8


class MulticlassSegmentation(Task):
    """Targets: int64 [H, W] class indices in 0..C-1, or the ignore index."""

    name = "multiclass-segmentation"
    activation = "softmax"
    dense = True
    soft_targets = False
    dice_mode = "multiclass"

    def ignored(self, comp: Competition) -> int:
        return ignore_index(comp)

    def target(self, value: Any) -> torch.Tensor:
        import torch

        return torch.tensor(np.asarray(value), dtype=torch.int64)

    def check_target(self, target: Any, comp: Competition, image_size: tuple[int, int]) -> None:
        import torch

        classes = len(comp.classes)
        if not 2 <= classes <= MAX_CLASSES:
            raise CompkitError(f"{comp.name}: multi-class segmentation takes 2..{MAX_CLASSES} classes; it has "
                               f"{classes}")
        if not (isinstance(target, torch.Tensor) and target.dtype == torch.int64
                and tuple(target.shape) == tuple(image_size)):
            raise CompkitError(f"{comp.name} is multiclass-segmentation: an item's target must be an int64 "
                               f"[{image_size[0]}, {image_size[1]}] map of class indices, as the image; got "
                               f"{_shape(target)}")
        ignore = ignore_index(comp)
        bad = target[(target != ignore) & ((target < 0) | (target >= classes))]
        if len(bad):
            raise CompkitError(f"{comp.name}: a target pixel is class {int(bad[0])}, outside 0..{classes - 1} "
                               f"and not the ignore index {ignore}")

    def stored(self, probabilities: torch.Tensor) -> torch.Tensor:
        import torch

        return probabilities.argmax(dim=1).to(torch.uint8)

    def stored_target(self, target: torch.Tensor) -> torch.Tensor:
        import torch

        return target.to(torch.uint8)  # classes < 255, and 255 itself is the ignore index

    def restore(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored)  # class indices, as the metrics take them

    def kept(self, probabilities: np.ndarray) -> np.ndarray:
        """uint8 class indices (N, H, W): the metrics need no more, and 21 float maps would not fit."""
        return np.asarray(probabilities).argmax(axis=1).astype(np.uint8)

    def decided(self, probabilities: np.ndarray) -> np.ndarray:
        """uint8 (H, W) class indices of one test image."""
        return np.asarray(probabilities).argmax(axis=0).astype(np.uint8)

    def png(self, prediction: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The class index of each pixel, resized to ``size`` by nearest neighbour."""
        import cv2

        prediction = np.asarray(prediction, dtype=np.uint8)
        if prediction.shape != tuple(size):
            prediction = cv2.resize(prediction, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return prediction

    def perfect(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        return np.asarray(targets)

    def constant(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        return np.zeros(np.shape(targets), dtype=np.uint8)  # every pixel the first class (the background)

    def random_predictions(self, rows: int, comp: Competition, rng: np.random.Generator) -> np.ndarray:
        probabilities = rng.dirichlet(np.ones(len(comp.classes)), size=(rows, 16, 16)).astype(np.float32)
        return probabilities.transpose(0, 3, 1, 2)  # (N, C, H, W)


def ignore_index(comp: Any) -> int:
    """The competition's ignore index (255 unless it sets ``ignore_index``)."""
    return int(getattr(comp, "ignore_index", 255))
