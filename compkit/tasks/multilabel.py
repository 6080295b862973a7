"""Multi-label classification: any number of classes per image, a sigmoid per class, (N, C) probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compkit.errors import CompkitError
from compkit.tasks.base import Task
from compkit.tasks.classification import Classification, _shape

if TYPE_CHECKING:
    from compkit.competition import Competition


class Multilabel(Task):
    """Targets: float32 (C,) of 0/1 (or soft values in [0, 1]), one per class."""

    name = "multilabel"
    activation = "sigmoid"
    several_labels = True

    def check_target(self, target: Any, comp: Competition, image_size: tuple[int, int]) -> None:
        import torch

        classes = len(comp.classes)
        if not (isinstance(target, torch.Tensor) and target.dtype == torch.float32
                and tuple(target.shape) == (classes,)):
            raise CompkitError(f"{comp.name} is multilabel: an item's target must be float32 ({classes},), one "
                               f"value in [0, 1] per class; got {_shape(target)}")
        if bool(((target < 0) | (target > 1)).any()):
            raise CompkitError(f"{comp.name} is multilabel: target values must lie in [0, 1]; got "
                               f"{target.tolist()}")

    def perfect(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        return np.asarray(targets, dtype=np.float32)

    constant = Classification.constant  # the most frequent class on every row

    def random_predictions(self, rows: int, comp: Competition, rng: np.random.Generator) -> np.ndarray:
        return rng.random((rows, len(comp.classes))).astype(np.float32)
