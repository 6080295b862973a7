"""Detection boxes: validation, COCO mAP and Global Wheat Detection's metric, merging folds and TTA views
(WBF, NMS, soft-NMS), score/NMS selection, flips and the PredictionString submission format. Predictions are
(N,) object arrays of float32 [K, 6] (score, label, x1, y1, x2, y2), targets of [K, 5]; boxes normalised."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from compkit.errors import CompkitError

TOLERANCE = 1e-4  # how far past [0, 1] a normalised coordinate may stray (float32 rounding) before it is an error
COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # exactly pycocotools' iouThrs
RECALLS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs: the 101 recall points precision is read at
WHEAT_THRESHOLDS = np.arange(0.5, 0.76, 0.05)
METHODS = ("wbf", "nms", "soft-nms")

# -- arrays and validation ---------------------------------------------------------------------------------


def ragged(arrays: Sequence[Any], columns: int) -> np.ndarray:
    """1-d object array (N,) of float32 [K, columns] arrays from N array-likes (lists, empty lists, arrays)."""
    out = np.empty(len(arrays), dtype=object)
    for index, array in enumerate(arrays):
        try:
            array = np.asarray(array, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise CompkitError(f"image {index}: not a numeric [K, {columns}] array ({error})") from None
        if array.size == 0:
            array = array.reshape(0, columns)
        if array.ndim != 2 or array.shape[1] != columns:
            raise CompkitError(f"image {index}: expected a float [K, {columns}] array, got shape {array.shape}")
        out[index] = array
    return out


def check(arrays: Sequence[Any], what: str, columns: int = 6) -> np.ndarray:
    """``ragged(arrays, columns)`` after checking every value is finite and the last four columns are
    normalised xyxy boxes (in [0, 1], x2 >= x1, y2 >= y1); coordinates a hair outside are clipped.
    ``what`` names the arrays in errors ("predictions", "targets", "view 2"). Raises CompkitError."""
    out = ragged(arrays, columns)
    for index, array in enumerate(out):
        out[index] = _checked(array, f"{what}, image {index}")
    return out


def _checked(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` [K, C] with its boxes (last 4 columns) validated and clipped to [0, 1]."""
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        row, column = bad[0]
        raise CompkitError(f"{where}, row {row}: value {array[row, column]} is not finite")
    box = array[:, -4:]
    bad = np.argwhere((box < -TOLERANCE) | (box > 1 + TOLERANCE))
    if len(bad):
        row, column = bad[0]
        raise CompkitError(f"{where}, row {row}: box coordinate {box[row, column]} is outside [0, 1]; boxes are "
                           "normalised by the network input's size (x / W, y / H)")
    bad = np.flatnonzero((box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1]))
    if len(bad):
        raise CompkitError(f"{where}, row {bad[0]}: box {box[bad[0]].tolist()} has x2 < x1 or y2 < y1; "
                           "boxes are (x1, y1, x2, y2)")
    return np.concatenate([array[:, :-4], np.clip(box, 0, 1)], axis=1)


def _pair(targets: Sequence[Any], predictions: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    targets, predictions = check(targets, "targets", 5), check(predictions, "predictions", 6)
    if len(targets) != len(predictions):
        raise CompkitError(f"{len(targets)} images of targets but {len(predictions)} of predictions")
    return targets, predictions


def _by_score(prediction: np.ndarray) -> np.ndarray:
    """Rows [K, 6] highest score first; ties keep their order (as pycocotools' mergesort)."""
    return prediction[np.argsort(-prediction[:, 0], kind="stable")]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [len(a), len(b)] IoU of xyxy boxes; 0 between two empty boxes (as pycocotools)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    import torch
    from torchvision.ops import box_iou

    iou = box_iou(torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64)))
    return np.nan_to_num(iou.numpy())


def _match(iou: np.ndarray, thresholds: np.ndarray, strict: bool, last: bool) -> np.ndarray:
    """bool (T, D): whether each prediction (rows of ``iou`` [D, G], highest score first) is a true positive
    at each threshold, matched greedily to the free ground truth of highest IoU. ``strict``: IoU > t
    (Kaggle's wheat), else IoU >= t (COCO). ``last``: an IoU tie goes to the last box (pycocotools' loop)."""
    hits = np.zeros((len(thresholds), len(iou)), dtype=bool)
    free = np.ones((len(thresholds), iou.shape[1]), dtype=bool)
    steps = np.arange(len(thresholds))
    limits = thresholds[:, None] if strict else np.minimum(thresholds, 1 - 1e-10)[:, None]
    for index, row in enumerate(iou if iou.shape[1] else []):
        valid = free & ((row > limits) if strict else (row >= limits))
        candidates = np.where(valid, row, -1.0)
        best = len(row) - 1 - candidates[:, ::-1].argmax(axis=1) if last else candidates.argmax(axis=1)
        found = valid[steps, best]
        hits[:, index] = found
        free[steps[found], best[found]] = False
    return hits


# -- metrics -----------------------------------------------------------------------------------------------


def coco_map(targets: Sequence[Any], predictions: Sequence[Any], iou_thresholds: Sequence[float] | None = None,
             max_detections: int = 100) -> float:
    """COCO box mAP@[.5:.95] as pycocotools' COCOeval stats[0]: per class, predictions (the top
    ``max_detections`` of each image) matched greedily by score at IoU >= t, precision interpolated at
    101 recall points, averaged over the thresholds and over the classes that have ground truth (area
    range all, no crowd boxes). Duplicates are false positives; classes only predicted are ignored.

    ``targets``: (N,) object of float32 [K, 5]; ``predictions``: (N,) object of float32 [K, 6].
    Raises CompkitError when the targets hold no box at all (mAP is undefined; pycocotools returns -1)."""
    targets, predictions = _pair(targets, predictions)
    thresholds = COCO_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, np.float64).reshape(-1)
    classes = np.unique(np.concatenate([target[:, 0] for target in targets])) if len(targets) else []
    if not len(classes):
        raise CompkitError("COCO mAP is undefined: the targets hold no box in any image")
    return float(np.mean([_class_precision(targets, predictions, label, thresholds, max_detections).mean()
                          for label in classes]))


def map50(targets: Sequence[Any], predictions: Sequence[Any]) -> float:
    """COCO mAP at IoU 0.5 (pycocotools' stats[1]); shapes and the no-box error as ``coco_map``."""
    return coco_map(targets, predictions, iou_thresholds=[0.5])


def _class_precision(targets: np.ndarray, predictions: np.ndarray, label: float, thresholds: np.ndarray,
                     max_detections: int) -> np.ndarray:
    """float64 (T, 101): one class's interpolated precision at each threshold and recall point."""
    scores, hits, truths = [], [], 0
    for target, prediction in zip(targets, predictions):
        truth = target[target[:, 0] == label, 1:]
        guess = _by_score(prediction[prediction[:, 1] == label])[:max_detections]
        truths += len(truth)
        scores.append(guess[:, 0])
        hits.append(_match(_iou(guess[:, 2:], truth), thresholds, strict=False, last=True))
    order = np.argsort(-np.concatenate(scores), kind="stable")
    return _interpolated_precision(np.concatenate(hits, axis=1)[:, order], truths)


def _interpolated_precision(hits: np.ndarray, truths: int) -> np.ndarray:
    """float64 (T, 101) from true-positive flags (T, D) in score order and the number of ground truths."""
    true = np.cumsum(hits, axis=1, dtype=np.float64)
    false = np.cumsum(~hits, axis=1, dtype=np.float64)
    recall = true / truths
    # pycocotools' epsilon, kept so the results agree to the last bit
    precision = true / (false + true + np.spacing(1))
    precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
    out = np.zeros((len(hits), len(RECALLS)))
    for step in range(len(hits)):
        index = np.searchsorted(recall[step], RECALLS, side="left")
        reached = index < hits.shape[1]
        out[step, reached] = precision[step, index[reached]]
    return out


def wheat_image_scores(targets: Sequence[Any], predictions: Sequence[Any],
                       thresholds: Sequence[float] = WHEAT_THRESHOLDS) -> np.ndarray:
    """Global Wheat Detection's score of each image, float64 (N,): the mean over IoU thresholds t of
    TP / (TP + FP + FN), predictions matched greedily by score to the free ground truth of highest IoU,
    a match needing IoU > t. Labels are ignored (one class). An image with no ground truth and no
    prediction scores 1 (the Kaggle kernels divide 0 by 0 there); shapes as ``coco_map``."""
    targets, predictions = _pair(targets, predictions)
    thresholds = np.asarray(thresholds, np.float64).reshape(-1)
    return np.array([_wheat_image(target[:, 1:], prediction, thresholds)
                     for target, prediction in zip(targets, predictions)], dtype=np.float64)


def wheat_score(targets: Sequence[Any], predictions: Sequence[Any],
                thresholds: Sequence[float] = WHEAT_THRESHOLDS) -> float:
    """Global Wheat Detection's metric: the mean over images of ``wheat_image_scores``."""
    return float(wheat_image_scores(targets, predictions, thresholds).mean())


def _wheat_image(truth: np.ndarray, prediction: np.ndarray, thresholds: np.ndarray) -> float:
    if not len(truth) and not len(prediction):
        return 1.0
    guess = _by_score(prediction)[:, 2:]
    true = _match(_iou(guess, truth), thresholds, strict=True, last=False).sum(axis=1)
    return float(np.mean(true / (len(guess) + len(truth) - true)))  # TP + FP + FN = D + G - TP


# -- merging and selection ---------------------------------------------------------------------------------


def merge(views: Sequence[Any], method: str = "wbf", iou: float = 0.55, skip: float = 0.0,
          weights: Sequence[float] | None = None) -> np.ndarray:
    """One prediction per image, (N,) object of float32 [K, 6] sorted by score, fused from ``views``
    (a list of (N,) prediction arrays, one per fold or TTA view, same images in the same order) with
    ensemble-boxes: "wbf" (weighted boxes fusion), "nms" or "soft-nms" (gaussian, sigma 0.5, boxes
    decayed below 0.001 dropped). Boxes scoring below ``skip`` and boxes of zero area are dropped first."""
    if method not in METHODS:
        raise CompkitError(f"unknown box merge method {method!r}; methods: {', '.join(METHODS)}")
    views = [check(view, f"view {index}") for index, view in enumerate(views)]
    if not views or len({len(view) for view in views}) > 1:
        raise CompkitError(f"merge needs views of the same images in the same order; images per view: "
                           f"{[len(view) for view in views]}")
    if weights is not None and len(weights) != len(views):
        raise CompkitError(f"{len(weights)} merge weights for {len(views)} views; give one weight per view")
    weights = None if weights is None else [float(weight) for weight in weights]
    return ragged([_merge_image([view[index] for view in views], method, iou, skip, weights)
                   for index in range(len(views[0]))], 6)


def _merge_image(predictions: list[np.ndarray], method: str, iou: float, skip: float,
                 weights: list[float] | None) -> np.ndarray:
    """float32 [K, 6] fused from one image's predictions of every view."""
    import ensemble_boxes

    area = [(rows[:, 4] - rows[:, 2]) * (rows[:, 5] - rows[:, 3]) for rows in predictions]
    # ensemble-boxes would print or warn about every zero-area box, and its NMS fails on no box at all
    kept = [rows[(rows[:, 0] >= skip) & (size > 0)] for rows, size in zip(predictions, area)]
    if not any(len(rows) for rows in kept):
        return np.zeros((0, 6), np.float32)
    lists = [rows[:, 2:] for rows in kept], [rows[:, 0] for rows in kept], [rows[:, 1] for rows in kept]
    if method == "wbf":
        box, score, label = ensemble_boxes.weighted_boxes_fusion(*lists, weights=weights, iou_thr=iou,
                                                                 skip_box_thr=skip)
    elif method == "nms":
        box, score, label = ensemble_boxes.nms(*lists, iou_thr=iou, weights=weights)
    else:
        box, score, label = ensemble_boxes.soft_nms(*lists, iou_thr=iou, sigma=0.5, weights=weights)
    return _by_score(np.column_stack([score, label, box]).astype(np.float32).reshape(-1, 6))


def select(predictions: Sequence[Any], threshold: float = 0.0, iou: float | None = None) -> np.ndarray:
    """(N,) object of float32 [K, 6]: the rows scoring >= ``threshold``, then, when ``iou`` is given,
    those class-wise NMS keeps at that IoU (torchvision's batched_nms), highest score first."""
    predictions = check(predictions, "predictions")
    return ragged([_select_image(rows, threshold, iou) for rows in predictions], 6)


def _select_image(rows: np.ndarray, threshold: float, iou: float | None) -> np.ndarray:
    rows = rows[rows[:, 0] >= threshold]
    if iou is None or not len(rows):
        return rows
    import torch
    from torchvision.ops import batched_nms

    keep = batched_nms(torch.from_numpy(rows[:, 2:].copy()), torch.from_numpy(rows[:, 0].copy()),
                       torch.from_numpy(rows[:, 1].astype(np.int64)), float(iou))
    return rows[keep.numpy()]


def search(targets: Sequence[Any], predictions: Sequence[Any], score: Callable[[np.ndarray, np.ndarray], float],
           thresholds: Sequence[float], ious: Sequence[float | None],
           higher_is_better: bool = True) -> dict[str, Any]:
    """The best ``select`` settings on out-of-fold predictions: {"threshold", "iou", "score"} over every
    pair of ``thresholds`` and ``ious`` (None: no NMS), ``score(targets, selected) -> float``."""
    if not len(thresholds) or not len(ious):
        raise CompkitError("search needs at least one score threshold and one IoU (None for no NMS)")
    predictions = check(predictions, "predictions")
    best: dict[str, Any] | None = None
    for iou in ious:
        # NMS then a score cut equals the cut then NMS: a box is only ever suppressed by a higher-scoring
        # one, which the cut keeps whenever it keeps the box; so NMS runs once per IoU
        suppressed = select(predictions, -math.inf, iou)
        for threshold in thresholds:
            value = float(score(targets, select(suppressed, threshold)))
            if best is None or (value > best["score"] if higher_is_better else value < best["score"]):
                best = {"threshold": float(threshold), "iou": iou, "score": value}
    return best


# -- geometry and the submission format --------------------------------------------------------------------


def flip(boxes: Any, horizontal: bool, vertical: bool) -> Any:
    """Normalised xyxy boxes [..., 4] (numpy or torch, returned as given) mirrored left-right and/or
    top-bottom: x1' = 1 - x2, x2' = 1 - x1 (and so for y). The input is not modified."""
    boxes = boxes if hasattr(boxes, "clone") else np.asarray(boxes)
    out = boxes.clone() if hasattr(boxes, "clone") else boxes.copy()
    if horizontal:
        out[..., [0, 2]] = 1 - boxes[..., [2, 0]]
    if vertical:
        out[..., [1, 3]] = 1 - boxes[..., [3, 1]]
    return out


def prediction_string(prediction: Any, width: float, height: float) -> str:
    """Global Wheat Detection's PredictionString of one image: "score x y w h" per box (highest score
    first), x y the top-left corner and w h the size in whole pixels of the original ``width`` x
    ``height`` image (clipped to it), the score with 4 decimals; "" for no box. ``prediction``: [K, 6]."""
    rows = _by_score(_checked(ragged([prediction], 6)[0], "prediction"))
    scale = np.array([width, height, width, height], np.float64)
    corners = np.rint(np.clip(rows[:, 2:] * scale, 0, scale)).astype(np.int64)
    sizes = corners[:, 2:] - corners[:, :2]
    return " ".join(f"{score:.4f} {x} {y} {w} {h}"
                    for score, (x, y), (w, h) in zip(rows[:, 0].tolist(), corners[:, :2].tolist(), sizes.tolist()))


def parse_prediction_string(text: Any, row: Any = None) -> np.ndarray:
    """float32 [K, 5] (score, x, y, w, h) from a PredictionString; empty text (or NaN, as pandas reads an
    empty cell) gives [0, 5]. Raises CompkitError naming ``row`` and the bad token for malformed text."""
    where = "PredictionString" if row is None else f"row {row}: PredictionString"
    tokens = [] if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).split()
    if len(tokens) % 5:
        raise CompkitError(f"{where} has {len(tokens)} numbers, not a multiple of 5 (score x y w h per box): "
                           f"{str(text)[:80]!r}")
    values = [_number(token, where) for token in tokens]
    boxes = np.array(values, dtype=np.float32).reshape(-1, 5)
    negative = np.argwhere(boxes[:, 3:] < 0)
    if len(negative):
        box, column = negative[0]
        raise CompkitError(f"{where}: box {box} has a negative {'wh'[column]} ({tokens[5 * box + 3 + column]!r})")
    return boxes


def _number(token: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CompkitError(f"{where}: token {token!r} is not a finite number")
    return value


def prediction_strings(ids: Sequence[Any], predictions: Sequence[Any], widths: Any, heights: Any,
                       columns: tuple[str, str] = ("image_id", "PredictionString")) -> Any:
    """A submission DataFrame: ``columns`` = (id, PredictionString), one row per image of ``ids``.
    ``predictions``: (N,) object of [K, 6]; ``widths``/``heights``: the original image sizes, one number
    for all or one per image."""
    import pandas as pd

    predictions = check(predictions, "predictions")
    if len(ids) != len(predictions):
        raise CompkitError(f"{len(ids)} image ids but {len(predictions)} predictions")
    try:
        widths, heights = (np.broadcast_to(np.asarray(size, np.float64), (len(ids),)) for size in (widths, heights))
    except ValueError:
        raise CompkitError(f"widths and heights must be one number or one per image ({len(ids)})") from None
    strings = [prediction_string(rows, width, height) for rows, width, height in zip(predictions, widths, heights)]
    return pd.DataFrame({columns[0]: list(ids), columns[1]: strings})
