"""The ``Task`` base class: what the rest of the kit needs to know about a kind of prediction.

A task says how many outputs a model has, how logits become probabilities, what a dataset item's
target looks like (and checks one), whether outputs are maps (so TTA inverts them), how predictions
are kept out-of-fold, what a file output receives, and which steps apply (a post-processing search,
class balance, mixing, pseudo-labels, the classical baseline). The core asks its competition's task
and never compares task names. Importing this loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from compkit.errors import CompkitError

if TYPE_CHECKING:
    import torch

    from compkit.competition import Competition


class Task:
    """One kind of prediction. Subclass it (or an existing task) and register an instance with the
    ``register_tasks`` hook, or set it as a competition's ``task``."""

    name: ClassVar[str] = ""
    activation: ClassVar[str] = "softmax"  # how logits become probabilities: softmax over dim 1 | sigmoid
    dense: ClassVar[bool] = False  # outputs are maps (N, K, H, W) that TTA views invert
    one_label: ClassVar[bool] = False  # one class per row: mixup/cutmix, balanced sampler, hard pseudo-labels
    several_labels: ClassVar[bool] = False  # independent classes per row (multi-label)
    searches_postprocess: ClassVar[bool] = False  # threshold / min-area searched on OOF at submit
    soft_targets: ClassVar[bool] = True  # can train on soft targets (out-of-fold probabilities)
    dice_mode: ClassVar[str | None] = None  # the "dice" loss: binary | multiclass (None: not a pixel task)
    scale: ClassVar[int | None] = None  # stored OOF probabilities are uint8 of p * scale (None: not quantised)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # -- the model ------------------------------------------------------------------------------------

    def outputs(self, comp: Competition) -> int:
        """Output channels of the model: one per class."""
        return len(comp.classes)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from logits, float32 (softmax in bfloat16 would round them to 3 digits)."""
        logits = logits.float()
        return logits.softmax(dim=1) if self.activation == "softmax" else logits.sigmoid()

    def squeeze(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Predictions as the kit hands them on ((B, C); a binary map (B, H, W))."""
        return probabilities

    # -- targets --------------------------------------------------------------------------------------

    def target(self, value: Any) -> torch.Tensor:
        """A dataset item's target from a table value: float32 (soft or multi-label)."""
        import torch

        return torch.tensor(np.asarray(value), dtype=torch.float32)  # a copy: pandas 3 hands out read-only arrays

    def check_item(self, item: dict[str, Any], comp: Competition, size: tuple[int, int] | None = None) -> None:
        """Raise CompkitError when a training item does not fit this task (``size``: the expected image
        (height, width), None: any)."""
        import torch

        image = item.get("image")
        if not isinstance(image, torch.Tensor) or image.dtype != torch.float32 or image.ndim != 3:
            raise CompkitError(f"{comp.name}: an item's image must be a float32 tensor [C, H, W]; got "
                               f"{_describe(image)}")
        if image.shape[0] != comp.in_channels:
            raise CompkitError(f"{comp.name}: an item's image has {image.shape[0]} channels; in_channels is "
                               f"{comp.in_channels}")
        if size is not None and tuple(image.shape[1:]) != tuple(size):
            raise CompkitError(f"{comp.name}: an item's image is {image.shape[1]}x{image.shape[2]}, expected "
                               f"{size[0]}x{size[1]} (image_size)")
        if "target" not in item:
            raise CompkitError(f"{comp.name}: a training item has no 'target'")
        self.check_target(item["target"], comp, tuple(image.shape[1:]))

    def check_target(self, target: Any, comp: Competition, image_size: tuple[int, int]) -> None:
        """Raise CompkitError when ``target`` is not what this task trains on."""
        raise NotImplementedError

    # -- out-of-fold and test predictions --------------------------------------------------------------

    def stored(self, probabilities: torch.Tensor) -> torch.Tensor:
        """What the out-of-fold file keeps of a batch's probabilities (computed on the device)."""
        import torch

        return probabilities.to(torch.float16)

    def stored_target(self, target: torch.Tensor) -> torch.Tensor:
        """What the out-of-fold file keeps of a batch's targets."""
        return target

    def restore(self, stored: np.ndarray) -> np.ndarray:
        """What the metric gets from stored predictions: float32 probabilities (quantised ones divided by
        ``scale``); a task that stores decisions (class indices) returns them as they are."""
        values = np.asarray(stored, dtype=np.float32)
        return values / self.scale if self.scale and np.asarray(stored).dtype == np.uint8 else values

    def kept(self, probabilities: np.ndarray) -> np.ndarray:
        """What a labelled test set's score keeps of a batch of numpy probabilities: all of them."""
        return probabilities

    def decided(self, probabilities: np.ndarray) -> np.ndarray:
        """What a file output receives for one test row (``Competition.write_files``): probabilities."""
        return np.asarray(probabilities, dtype=np.float32)

    def png(self, prediction: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A uint8 image of one ``decided`` prediction at ``size`` (height, width), for ``compkit predict``
        on a dense task; others have no image."""
        raise CompkitError(f"{self.name} predictions are not images")

    def image_scores(self, comp: Competition) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """The competition's score per sample when its metric is a mean over samples (then the CV is
        computed a chunk at a time), else None."""
        return None

    # -- what the contract tests and baselines use ----------------------------------------------------

    def perfect(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        """Predictions that match ``targets`` (stacked item targets) exactly."""
        raise NotImplementedError

    def constant(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        """The best constant prediction a model must beat (majority class, all background, ...)."""
        raise NotImplementedError

    def random_predictions(self, rows: int, comp: Competition, rng: np.random.Generator) -> np.ndarray:
        """Plausible random test predictions (as ``Competition.submission`` receives them)."""
        return rng.dirichlet(np.ones(len(comp.classes)), size=rows).astype(np.float32)

    def label_names(self, comp: Competition) -> list[str] | None:
        """The values a label submission's label column may take (None: not a label submission)."""
        return None

    def ignored(self, comp: Competition) -> int | None:
        """The target value the loss and metrics skip (multi-class segmentation's ignore index), or None."""
        return None

    def refuse(self, comp: Competition, what: str, needs: str) -> CompkitError:
        """The error for a step this task does not support."""
        return CompkitError(f"{what} is for {needs}; {comp.name} is {self.name}")


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} {getattr(value, 'dtype', '')} {tuple(shape) if shape is not None else ''}".strip()
