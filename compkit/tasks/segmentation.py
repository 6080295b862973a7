"""Binary segmentation: one output channel, a sigmoid per pixel, (N, H, W) probabilities.

Out-of-fold maps are kept as uint8 probabilities (1/255 steps) and uint8 masks, 2 bytes a pixel;
submit searches the threshold and minimum component area on them (``compkit.postprocess``) unless
``mask_threshold`` fixes the threshold, and with ``triple_threshold`` also the SIIM winners' rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from compkit.errors import CompkitError
from compkit.tasks.base import Task
from compkit.tasks.classification import _shape

if TYPE_CHECKING:
    import torch

    from compkit.competition import Competition

SCALE = 255  # as compkit.oof.SCALE
THRESHOLD = 0.5  # a drawn mask's pixel is foreground above this probability


class Segmentation(Task):
    """Targets: float32 [1, H, W] masks of 0/1 at the image's size."""

    name = "segmentation"
    activation = "sigmoid"
    dense = True
    searches_postprocess = True
    soft_targets = False
    scale = SCALE
    dice_mode = "binary"

    def __init__(self, triple_threshold: bool = False) -> None:
        self.triple_threshold = triple_threshold  # also search "empty unless enough confident pixels"

    def outputs(self, comp: Competition) -> int:
        return 1

    def squeeze(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities[:, 0] if probabilities.ndim == 4 and probabilities.shape[1] == 1 else probabilities

    def check_target(self, target: Any, comp: Competition, image_size: tuple[int, int]) -> None:
        import torch

        if not (isinstance(target, torch.Tensor) and target.dtype == torch.float32
                and tuple(target.shape) == (1, *image_size)):
            raise CompkitError(f"{comp.name} is segmentation: an item's target must be a float32 mask [1, "
                               f"{image_size[0]}, {image_size[1]}] of 0/1, as the image; got {_shape(target)}")
        if bool(((target < 0) | (target > 1)).any()):
            raise CompkitError(f"{comp.name} is segmentation: mask values must lie in [0, 1] (0/255 masks "
                               "need dividing by 255)")

    def stored(self, probabilities: torch.Tensor) -> torch.Tensor:
        import torch

        # compkit.oof.quantise, on the device
        return self.squeeze(probabilities).clamp(0, 1).mul(SCALE).round().to(torch.uint8)

    def stored_target(self, target: torch.Tensor) -> torch.Tensor:
        """Masks as uint8 (exact); a soft mask as float16."""
        import torch

        target = self.squeeze(target)
        if not target.is_floating_point():
            return target
        if bool(((target == target.round()) & (target >= 0) & (target <= 255)).all()):
            return target.to(torch.uint8)
        return target.half()

    def fixed_postprocess(self, config: Any) -> dict[str, Any] | None:
        """``mask_threshold`` set by the recipe: that threshold and no minimum area, nothing searched."""
        return {"threshold": config.mask_threshold, "min_area": 0} if config.mask_threshold else None

    def search_postprocess(self, comp: Competition, chunks: Any) -> dict[str, Any]:
        """The threshold and minimum component area (and with ``triple_threshold`` the SIIM gate) that score
        best on the chunks (``compkit.postprocess.search_chunks``)."""
        from compkit import postprocess

        return postprocess.search_chunks(chunks, triple=self.triple_threshold)

    def postprocess(self, predictions: np.ndarray, params: dict[str, Any] | None) -> np.ndarray:
        """Binary masks from the probabilities with the chosen threshold and minimum area."""
        from compkit import postprocess

        return postprocess.apply(predictions, params) if params else predictions

    def png(self, prediction: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """255 where the probability (resized linearly to ``size``) is above 0.5, else 0."""
        import cv2

        prediction = np.asarray(prediction, dtype=np.float32)
        if prediction.shape != tuple(size):
            prediction = cv2.resize(prediction, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return np.where(prediction > THRESHOLD, 255, 0).astype(np.uint8)

    def image_scores(self, comp: Competition) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        from compkit import metrics
        from compkit.competition import Competition

        if type(comp).score is not Competition.score:
            return None
        return metrics.PER_IMAGE.get(comp.metric.replace("-", "_"))

    def perfect(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        return np.asarray(targets, dtype=np.float32)

    def constant(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        return np.zeros(np.shape(targets), dtype=np.float32)  # every image empty

    def random_predictions(self, rows: int, comp: Competition, rng: np.random.Generator) -> np.ndarray:
        return (rng.random((rows, 16, 16)) > 0.7).astype(np.float32)
