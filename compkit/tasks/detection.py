"""Object detection: boxes and labels per image, torchvision's detectors, boxes merged by weighted boxes fusion.

An item's target is ``{"boxes": float32 [K, 4] xyxy in pixels of the transformed image, "labels": int64 [K]}``
(K may be 0). Predictions are, per image, float32 [K, 6] rows (score, label, x1, y1, x2, y2) with the boxes
normalised to [0, 1] by the input's width and height, highest score first, in a 1-d object array (one entry
per image); targets as the metrics get them are [K, 5] rows (label, x1, y1, x2, y2), normalised alike. IoU
does not change when x and y are scaled, so the metrics (``compkit.boxes``) need no image sizes, and a
submission writer multiplies by each test image's own width and height.

The models (``tv-det/<name>``, ``compkit.detectors``) compute their losses themselves in train mode and
return detections in eval mode; this task owns that difference (``training_loss``, ``forward``), so the
Engine trains them like any model. torchvision's class 0 is the background: labels are shifted by one on the
way in and back on the way out, and nothing else sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compkit.errors import CompkitError
from compkit.tasks.base import Task, _describe

if TYPE_CHECKING:
    import torch

    from compkit.competition import Competition

MIN_VISIBILITY = 0.3  # a box cut by a crop or the border is dropped when less than this share stays visible
MERGES = ("wbf", "nms", "soft-nms")
NMS_IOUS = (None, 0.3, 0.4, 0.5, 0.6, 0.7)  # searched on OOF; None: the detector's own NMS only
SCORE_THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05 ... 0.95
# TTA views whose boxes map back by flips: (horizontal, vertical)
VIEW_FLIPS = {"identity": (False, False), "hflip": (True, False), "vflip": (False, True), "rot180": (True, True)}


class Detection(Task):
    """Targets: a dict of boxes (float32 [K, 4] xyxy pixels) and labels (int64 [K], 0..C-1) per image.

    ``merge``: how TTA views (and ``submit``'s folds) are merged: ``wbf`` (weighted boxes fusion), ``nms`` or
    ``soft-nms`` (``ensemble-boxes``), at IoU ``merge_iou``.
    """

    name = "detection"
    activation = None  # type: ignore[assignment]  # detectors score their boxes themselves
    searches_postprocess = True  # the score threshold and an NMS IoU, searched on OOF
    soft_targets = False
    images_alone = False  # in train mode a torchvision detector needs the targets

    def __init__(self, merge: str = "wbf", merge_iou: float = 0.55) -> None:
        if merge not in MERGES:
            raise CompkitError(f"unknown box merge {merge!r}; available: {', '.join(MERGES)}")
        self.merge_method, self.merge_iou = merge, merge_iou

    # -- the model ------------------------------------------------------------------------------------

    def outputs(self, comp: Competition) -> int:
        """Object classes (the detector adds torchvision's background itself)."""
        return len(comp.classes)

    def compose(self, steps: list[Any]) -> Any:
        """An albumentations Compose that moves the boxes with the image (``bboxes``: [K, 5] rows x1, y1, x2, y2,
        label): boxes leaving the image are clipped to it, and dropped when less than ``MIN_VISIBILITY`` of
        their area stays inside."""
        import albumentations as A

        if not any(isinstance(step, A.DualTransform) for step in steps):
            return A.Compose(steps)  # nothing moves pixels: the boxes stay as they are (and albumentations stays quiet)
        # the label rides along as a fifth column, so the Compose also runs on an image alone (compkit predict)
        boxes = A.BboxParams(format="pascal_voc", clip=True, min_visibility=MIN_VISIBILITY)
        return A.Compose(steps, bbox_params=boxes)

    def transformed(self, transform: Any, image: np.ndarray, value: Any) -> tuple[np.ndarray, Any]:
        """The image and its target dict through ``transform`` (``value``: float32 [K, 5] rows (label, x1, y1,
        x2, y2) in pixels of the image file, None at test)."""
        import torch

        rows = np.zeros((0, 5), np.float32) if value is None else np.asarray(value, dtype=np.float32).reshape(-1, 5)
        boxes, labels = rows[:, 1:], rows[:, 0].astype(np.int64)
        if transform is not None and "bboxes" in getattr(transform, "processors", {}):
            out = transform(image=image, bboxes=np.column_stack([boxes, labels]).astype(np.float32).reshape(-1, 5))
            moved = np.asarray(out["bboxes"], np.float32)
            image, boxes = out["image"], moved[:, :4].reshape(-1, 4)
            labels = moved[:, 4].astype(np.int64) if moved.shape[1:] == (5,) else np.zeros(0, np.int64)
        elif transform is not None:
            if value is not None and len(rows) and _moves_pixels(transform):
                raise CompkitError("a detection transform that moves pixels must be built with task.compose(steps) "
                                   "(an albumentations Compose with bbox_params), or the boxes would not follow")
            image = transform(image=image)["image"]
        if value is None:
            return image, None
        return image, {"boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
                       "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1))}

    def collate_fn(self) -> Any:
        return collate

    def to_device(self, target: Any, move: Any) -> Any:
        return [{key: move(value) for key, value in item.items()} for item in target]

    def training_loss(self, network: Any, loss: Any, images: torch.Tensor, target: Any) -> torch.Tensor:
        """``loss`` of the detector's loss dict (train mode: it takes the targets, background-shifted)."""
        shifted = [{"boxes": item["boxes"], "labels": item["labels"] + 1} for item in target]
        return loss(network(list(images), shifted), target)

    def forward(self, model: Any, images: torch.Tensor) -> list[torch.Tensor]:
        """Eval-mode detections of ``images`` [B, 3, H, W]: per image float32 [K, 6] (score, label, x1, y1,
        x2, y2), boxes normalised, highest score first."""
        import torch

        height, width = images.shape[-2:]
        scale = images.new_tensor([width, height, width, height], dtype=torch.float32)
        rows = []
        for found in model(list(images)):
            # RetinaNet and FCOS score torchvision's background class 0 like the others; it never trains
            # positive, and it is no class of the competition's
            found = {key: value[found["labels"] > 0] for key, value in found.items()}
            order = found["scores"].float().argsort(descending=True)
            rows.append(torch.cat([found["scores"].float()[order, None], (found["labels"][order, None] - 1).float(),
                                   (found["boxes"].float()[order] / scale).clamp(0, 1)], dim=1))
        return rows

    def probabilities(self, logits: Any) -> Any:
        return logits  # forward() already gives scored boxes

    def valid_loss(self, loss: Any, logits: Any, target: Any) -> None:
        return None  # in eval mode a torchvision detector returns detections, not losses

    def finish(self, output: Any) -> list[torch.Tensor]:
        return list(output)

    def to_numpy(self, output: Any) -> np.ndarray:
        return self.host(output, compact=False, dtype=None)

    # -- TTA and merging -------------------------------------------------------------------------------

    def predict_views(self, fn: Any, images: torch.Tensor, views: Any) -> list[torch.Tensor]:
        """Detections merged over TTA ``views``: each view's boxes flipped back to the original frame
        right after its own forward pass, then fused per image (``merge``)."""
        import torch

        from compkit import boxes

        unknown = [view.name for view in views if view.name not in VIEW_FLIPS]
        if unknown:
            raise CompkitError(f"detection TTA maps boxes back through flips only; views {', '.join(unknown)} are "
                               "not flips: use tta none, hflip, vflip or flips")
        per_view = []
        for view in views:
            horizontal, vertical = VIEW_FLIPS[view.name]
            found = []
            for rows in fn(view.forward(images)):
                rows = rows.float().clone()
                rows[:, 2:] = boxes.flip(rows[:, 2:], horizontal, vertical)
                found.append(rows.cpu().numpy())
            per_view.append(boxes.ragged(found, 6))
        merged = per_view[0] if len(per_view) == 1 else self.merge(per_view)
        return [torch.from_numpy(np.asarray(rows, np.float32)).to(images.device) for rows in merged]

    def merge(self, predictions: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
        """Fuse several predictions of the same images (folds, views) with ``merge`` (compkit.boxes.merge)."""
        from compkit import boxes

        return boxes.merge(predictions, method=self.merge_method, iou=self.merge_iou, weights=weights)

    # -- out-of-fold and test predictions --------------------------------------------------------------

    def host(self, output: Any, *, compact: bool, dtype: Any) -> np.ndarray:
        from compkit import boxes

        return boxes.ragged([np.asarray(rows.float().cpu() if hasattr(rows, "cpu") else rows, np.float32)
                             for rows in output], 6)

    def host_target(self, target: Any, images: torch.Tensor, *, compact: bool) -> np.ndarray:
        """Per image float32 [K, 5] (label, x1, y1, x2, y2), boxes normalised by the input size."""
        from compkit import boxes

        height, width = images.shape[-2:]
        scale = np.array([width, height, width, height], np.float32)
        rows = [np.concatenate([item["labels"].cpu().numpy()[:, None].astype(np.float32),
                                item["boxes"].float().cpu().numpy().reshape(-1, 4) / scale], axis=1)
                for item in target]
        return boxes.ragged(rows, 5)

    def restore(self, stored: np.ndarray) -> np.ndarray:
        return stored

    def validation_score(self, score: Any, targets: np.ndarray, predictions: np.ndarray,
                         higher_is_better: bool = True) -> float:
        """The metric at the best score threshold of ``SCORE_THRESHOLDS``: a detector keeps up to 200 weak
        boxes an image, and a metric that counts false positives (the wheat score) would judge an epoch by
        boxes no submission keeps. ``submit`` searches the threshold and an NMS IoU on the same OOF."""
        from compkit import boxes

        found = boxes.search(targets, predictions, score, SCORE_THRESHOLDS, [None], higher_is_better)
        return float(found["score"])

    def search_postprocess(self, comp: Competition, chunks: Any) -> dict[str, Any]:
        """The score threshold and class-wise NMS IoU (or none) that score best on the out-of-fold boxes."""
        from compkit import boxes

        parts = list(chunks)
        targets = np.concatenate([part[0] for part in parts])
        predictions = np.concatenate([part[1] for part in parts])
        return boxes.search(targets, predictions, comp.score, SCORE_THRESHOLDS, NMS_IOUS, comp.higher_is_better)

    def postprocess(self, predictions: np.ndarray, params: dict[str, Any] | None) -> np.ndarray:
        """The boxes scoring at least the chosen threshold, after NMS at the chosen IoU."""
        from compkit import boxes

        return boxes.select(predictions, params["threshold"], params["iou"]) if params else predictions

    def prediction_frame(self, comp: Competition, table: Any, predictions: np.ndarray) -> Any:
        """One row per box: ``image``, ``score``, ``label`` (the class name), ``x1 y1 x2 y2`` in pixels of the
        image file (sizes read from the headers); an image with no box has no row."""
        import pandas as pd
        from PIL import Image

        rows = []
        for image, path, found in zip(table["image"], table["path"], predictions):
            with Image.open(path) as opened:
                width, height = opened.size
            for score, label, *box in np.asarray(found, np.float32).reshape(-1, 6):
                x1, y1, x2, y2 = np.asarray(box) * [width, height, width, height]
                rows.append((image, round(float(score), 4), comp.classes[int(label)], *np.round([x1, y1, x2, y2], 1)))
        return pd.DataFrame(rows, columns=["image", "score", "label", "x1", "y1", "x2", "y2"])

    def decided(self, probabilities: np.ndarray) -> np.ndarray:
        return np.asarray(probabilities, dtype=np.float32).reshape(-1, 6)

    # -- checks, contract and baselines ----------------------------------------------------------------

    def check_target(self, target: Any, comp: Competition, image_size: tuple[int, int]) -> None:
        import torch

        if not isinstance(target, dict) or set(target) < {"boxes", "labels"}:
            raise CompkitError(f"{comp.name} is detection: an item's target must be a dict of 'boxes' and "
                               f"'labels'; got {_describe(target)}")
        boxes, labels = target["boxes"], target["labels"]
        if not (isinstance(boxes, torch.Tensor) and boxes.dtype == torch.float32 and boxes.ndim == 2
                and boxes.shape[1] == 4):
            raise CompkitError(f"{comp.name}: target boxes must be float32 [K, 4] xyxy pixels; got {_describe(boxes)}")
        if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.shape == (len(boxes),)):
            raise CompkitError(f"{comp.name}: target labels must be int64 [K] for K = {len(boxes)} boxes; got "
                               f"{_describe(labels)}")
        height, width = image_size
        outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bool((outside | empty).any()):
            bad = boxes[outside | empty][0].tolist()
            raise CompkitError(f"{comp.name}: target box {bad} is empty or outside the {width}x{height} image")
        wrong = labels[(labels < 0) | (labels >= len(comp.classes))]
        if len(wrong):
            raise CompkitError(f"{comp.name}: a box's label is {int(wrong[0])}, outside 0..{len(comp.classes) - 1}")

    def perfect(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        from compkit import boxes

        return boxes.ragged([np.concatenate([np.ones((len(rows), 1), np.float32), np.asarray(rows, np.float32)], 1)
                             for rows in targets], 6)

    def constant(self, targets: np.ndarray, comp: Competition) -> np.ndarray:
        from compkit import boxes

        return boxes.ragged([np.zeros((0, 6), np.float32) for _ in targets], 6)  # no box anywhere

    def random_predictions(self, rows: int, comp: Competition, rng: np.random.Generator) -> np.ndarray:
        from compkit import boxes

        found = []
        for _ in range(rows):
            count = int(rng.integers(0, 5))
            corners = np.sort(rng.random((count, 2, 2)), axis=1)  # (x1 < x2, y1 < y2)
            box = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], 1)
            score = np.sort(rng.random(count))[::-1]
            label = rng.integers(0, len(comp.classes), count)
            found.append(np.column_stack([score, label, box]).astype(np.float32).reshape(-1, 6))
        return boxes.ragged(found, 6)


def _moves_pixels(transform: Any) -> bool:
    """Whether an albumentations pipeline holds a step that moves pixels (a flip, a resize, a crop...)."""
    import albumentations as A

    steps = getattr(transform, "transforms", None)
    if steps is None:
        return isinstance(transform, A.DualTransform)
    return any(_moves_pixels(step) for step in steps)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of detection items: images stacked [B, 3, H, W], targets kept as a list of per-image dicts."""
    import torch
    from torch.utils.data import default_collate

    batch = {"image": torch.stack([item["image"] for item in items])}
    if "target" in items[0]:
        batch["target"] = [item["target"] for item in items]
    rest = [{key: value for key, value in item.items() if key not in ("image", "target")} for item in items]
    if rest[0]:
        batch |= default_collate(rest)
    return batch


def anchor_generator(model: Any) -> Any:
    """The model's anchor generator (torchvision's ``AnchorGenerator``), see ``compkit.detectors``."""
    from compkit import detectors

    return detectors.anchor_generator(model)


def anchors(model: Any, image_size: tuple[int, int]) -> list[Any]:
    """The model's anchors per feature level for one image of ``image_size``, see ``compkit.detectors.anchors``."""
    from compkit import detectors

    return detectors.anchors(model, image_size)
