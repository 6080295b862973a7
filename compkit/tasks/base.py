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
    images_alone: ClassVar[bool] = True  # the model runs on images without targets in train mode (BatchNorm recompute)

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

    def forward(self, model: Any, images: torch.Tensor) -> Any:
        """The model's eval-mode output for ``images`` [B, C, H, W]: logits (a detector: its boxes)."""
        return model(images)

    def training_loss(self, network: Any, loss: Any, images: torch.Tensor, target: Any) -> torch.Tensor:
        """The training loss of a batch: ``loss(network(images), target)`` (a detector computes its own)."""
        return loss(network(images), target)

    def valid_loss(self, loss: Any, logits: Any, target: Any) -> torch.Tensor | None:
        """The validation loss of a batch's logits (None: this task's models give none in eval mode)."""
        return loss(logits.float(), target).float()

    def to_numpy(self, output: Any) -> np.ndarray:
        """``Engine.predict_batch``'s result as a numpy array (on the host)."""
        return output.cpu().numpy()

    def finish(self, output: Any) -> Any:
        """``Engine.predict_batch``'s result from the probabilities of a batch."""
        return self.squeeze(output.float())

    # -- data -----------------------------------------------------------------------------------------

    def compose(self, steps: list[Any]) -> Any:
        """The albumentations Compose of a competition's transform steps (a detector's also moves boxes)."""
        import albumentations as A

        return A.Compose(steps)

    def transformed(self, transform: Any, image: np.ndarray, value: Any) -> tuple[np.ndarray, Any]:
        """An image through ``transform`` and its target tensor from a table value (None at test)."""
        if transform is not None:
            image = transform(image=image)["image"]
        return image, None if value is None else self.target(value)

    def collate_fn(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]] | None:
        """How items become a batch (None: torch's default collate)."""
        return None

    def to_device(self, target: Any, move: Callable[[Any], Any]) -> Any:
        """A batch's target on the device (``move`` moves one tensor)."""
        return move(target)

    # -- TTA and merging ------------------------------------------------------------------------------

    def predict_views(self, fn: Callable[[Any], Any], images: torch.Tensor, views: Any) -> Any:
        """Probabilities merged over TTA ``views`` (``fn``: images -> probabilities); maps are inverted."""
        from compkit import tta

        return tta.predict(fn, images, views, dense=self.dense)

    def merge(self, predictions: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
        """Several models' predictions of the same rows merged: their (weighted) mean."""
        weights = [1.0] * len(predictions) if weights is None else weights
        total = sum(weight * np.asarray(values, dtype=np.float32) for weight, values in zip(weights, predictions))
        return total / float(sum(weights))

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

    def host(self, output: Any, *, compact: bool, dtype: Any) -> np.ndarray:
        """A batch's probabilities as numpy: as oof.npz keeps them (``compact``), else squeezed to ``dtype``."""
        output = self.stored(output) if compact else self.squeeze(output).to(dtype)
        return output.cpu().numpy()

    def host_target(self, target: Any, images: torch.Tensor, *, compact: bool) -> np.ndarray:
        """A batch's targets as numpy: as oof.npz keeps them (``compact``), else squeezed."""
        target = self.stored_target(target) if compact else self.squeeze(target)
        return target.cpu().numpy()

    def restore(self, stored: np.ndarray) -> np.ndarray:
        """What the metric gets from stored predictions: float32 probabilities (quantised ones divided by
        ``scale``); a task that stores decisions (class indices) returns them as they are."""
        values = np.asarray(stored, dtype=np.float32)
        return values / self.scale if self.scale and np.asarray(stored).dtype == np.uint8 else values

    def validation_score(self, score: Callable[[np.ndarray, np.ndarray], float], targets: np.ndarray,
                         predictions: np.ndarray, higher_is_better: bool = True) -> float:
        """A validation fold's score from its targets and restored predictions: ``score`` of them."""
        return float(score(targets, predictions))

    def fixed_postprocess(self, config: Any) -> dict[str, Any] | None:
        """Post-processing the recipe fixes (no search), or None (``searches_postprocess``: search it)."""
        return None

    def search_postprocess(self, comp: Competition, chunks: Any) -> dict[str, Any]:
        """The post-processing chosen on out-of-fold ``(targets, probabilities)`` chunks (a sample of them)."""
        raise self.refuse(comp, "a post-processing search", "a task that has one")

    def postprocess(self, predictions: np.ndarray, params: dict[str, Any] | None) -> np.ndarray:
        """A batch of test predictions after the chosen post-processing (none: as they are)."""
        return predictions

    def kept(self, probabilities: np.ndarray) -> np.ndarray:
        """What a labelled test set's score keeps of a batch of numpy probabilities: all of them."""
        return probabilities

    def decided(self, probabilities: np.ndarray) -> np.ndarray:
        """What a file output receives for one test row (``Competition.write_files``): probabilities."""
        return np.asarray(probabilities, dtype=np.float32)

    def prediction_frame(self, comp: Competition, table: Any, predictions: np.ndarray) -> Any:
        """``compkit predict``'s CSV rows for ``table``'s images (``image``, ``path``), or None for the default
        (a probability column per class)."""
        return None

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
