"""Single-label classification: one class per image, softmax over the classes, (N, C) probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compkit.errors import CompkitError
from compkit.tasks.base import Task

if TYPE_CHECKING:
    import torch

    from compkit.competition import Competition


class Classification(Task):
    """Targets: an int64 class index (a scalar), or float32 (C,) class probabilities (soft targets)."""

    name = "classification"
    activation = "softmax"
    one_label = True

    def target(self, value: Any) -> torch.Tensor:
        import torch

        array = np.asarray(value)
        if array.ndim == 0:
            return torch.tensor(int(array), dtype=torch.int64)
        return super().target(array)

    def check_target(self, target: Any, comp: Competition, image_size: tuple[int, int]) -> None:
        import torch

        classes = len(comp.classes)
        if classes < 2:
            raise CompkitError(f"{comp.name}: classification needs at least 2 classes; classes = {comp.classes!r}")
        if isinstance(target, torch.Tensor) and target.dtype == torch.int64 and target.ndim == 0:
            if not 0 <= int(target) < classes:
                raise CompkitError(f"{comp.name}: a target class index is {int(target)}, outside 0..{classes - 1}")
            return
        if isinstance(target, torch.Tensor) and target.dtype == torch.float32 and tuple(target.shape) == (classes,):
            return
        raise CompkitError(f"{comp.name} is classification: an item's target must be an int64 class index (a "
                           f"scalar) or float32 ({classes},) class probabilities; got {_shape(target)}")

    def perfect(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        targets = np.asarray(targets)
        if targets.ndim == 1:
            return np.eye(len(comp.classes), dtype=np.float32)[targets]
        return targets.astype(np.float32)

    def constant(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        targets, classes = np.asarray(targets), len(comp.classes)
        counts = np.bincount(targets, minlength=classes) if targets.ndim == 1 else targets.sum(axis=0)
        return np.tile(np.eye(classes, dtype=np.float32)[int(np.argmax(counts))], (len(targets), 1))

    def label_names(self, comp: Competition) -> list[str]:
        return list(comp.classes)


def _shape(target: Any) -> str:
    return f"{getattr(target, 'dtype', type(target).__name__)} {tuple(getattr(target, 'shape', ()))}"
