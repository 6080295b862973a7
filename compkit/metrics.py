"""Competition metrics on numpy probabilities: accuracy, mean column ROC AUC, mean image Dice, and for
multi-class segmentation mean IoU and pixel accuracy.

Targets and predictions follow the data contract: (N,) class indices or (N, C) targets against
(N, C) probabilities; (N, H, W) masks against (N, H, W) probabilities; (N, H, W) class-index maps
against (N, C, H, W) probabilities or (N, H, W) class indices (an ignore index, 255, is not scored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from compkit.errors import CompkitError


def accuracy(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of argmax predictions equal to the target class.

    ``targets``: (N,) int class index, or (N, C) one-hot / soft (argmax taken).
    ``probabilities``: (N, C); or (N,) / (N, 1) for a binary problem, cut at 0.5.
    """
    targets, probabilities = np.asarray(targets), np.asarray(probabilities)
    _check_rows(targets, probabilities)
    predicted = _predicted_classes(probabilities)
    target_classes = targets.argmax(axis=1) if targets.ndim == 2 else targets
    return float((predicted == target_classes).mean())


def roc_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean of the per-column ROC AUCs (ties count one half, as in sklearn).

    ``probabilities``: (N, C), or (N,) / (N, 1) / (N, 2) for a binary problem (the positive class
    is column 1 of (N, 2)). ``targets``: (N, C) 0/1 (binarised at 0.5) or (N,) class index,
    turned into one-hot. Raises CompkitError naming any column that holds only one class.
    """
    targets, probabilities = np.asarray(targets), np.asarray(probabilities, dtype=np.float64)
    _check_rows(targets, probabilities)
    targets, probabilities = _binary_columns(targets, probabilities)
    return float(_column_aucs(targets, probabilities).mean())


def dice_per_image(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Dice of each image, float64 (N,); an image with empty truth and empty prediction scores 1.

    ``targets``: (N, H, W) masks, foreground > 0.5 (so 0/1 and 0/255 both work).
    ``probabilities``: (N, H, W) float, foreground > ``threshold``; 0/1 masks work as they are.
    """
    targets, probabilities = np.asarray(targets), np.asarray(probabilities)
    if targets.shape != probabilities.shape or targets.ndim < 2:
        raise CompkitError(
            f"Dice needs targets and probabilities of the same shape (N, H, W); "
            f"got {targets.shape} and {probabilities.shape}"
        )
    truth = targets.reshape(len(targets), -1) > 0.5
    predicted = probabilities.reshape(len(probabilities), -1) > threshold
    intersection = np.count_nonzero(truth & predicted, axis=1)
    total = np.count_nonzero(truth, axis=1) + np.count_nonzero(predicted, axis=1)
    return dice_from_counts(intersection, total)


def dice(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """Mean Dice over images (N, H, W); empty truth with empty prediction scores 1."""
    return float(dice_per_image(targets, probabilities, threshold).mean())


# Metrics that are a mean over samples, by name: their per-sample form (the CV of a huge OOF stack is
# then computed in chunks).
PER_IMAGE = {"dice": dice_per_image}


def dice_from_counts(intersection: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Dice 2 * |A & B| / (|A| + |B|) from pixel counts, any shape; 1 where both masks are empty."""
    intersection, total = np.asarray(intersection, dtype=np.float64), np.asarray(total, dtype=np.float64)
    return np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)


CHUNK_PIXELS = 1 << 24  # pixels per step of a confusion matrix over a large stack


def pixel_confusion(targets: np.ndarray, predictions: np.ndarray, ignore_index: int = 255,
                    num_classes: int | None = None) -> np.ndarray:
    """int64 (K, K) pixel counts, rows the true class and columns the predicted one, over every pixel whose
    target is not ``ignore_index``. ``targets``: (N, H, W) class indices; ``predictions``: (N, H, W)
    class indices or (N, C, H, W) probabilities (argmax). K: ``num_classes``, else C of the
    probabilities, else one more than the largest class seen. Counted a chunk of images at a time."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    dense_probabilities = predictions.ndim == targets.ndim + 1
    shape = predictions.shape[:1] + predictions.shape[2:] if dense_probabilities else predictions.shape
    if targets.ndim < 2 or shape != targets.shape:
        raise CompkitError(f"a pixel metric needs (N, H, W) targets and (N, H, W) class indices or (N, C, H, W) "
                           f"probabilities of the same images; got {targets.shape} and {predictions.shape}")
    if num_classes is None and dense_probabilities:
        num_classes = predictions.shape[1]
    pixels = int(np.prod(targets.shape[1:], dtype=np.int64)) * (predictions.shape[1] if dense_probabilities else 1)
    step = max(1, CHUNK_PIXELS // max(1, pixels))
    total = np.zeros((0, 0), dtype=np.int64)
    for start in range(0, len(targets), step):
        truth = targets[start:start + step].reshape(-1).astype(np.int64)
        chunk = predictions[start:start + step]
        guess = (chunk.argmax(axis=1) if dense_probabilities else chunk).reshape(-1).astype(np.int64)
        keep = truth != ignore_index
        truth, guess = truth[keep], guess[keep]
        if len(truth) and (truth.min() < 0 or guess.min() < 0):
            raise CompkitError("class indices must not be negative (outside the ignore index)")
        k = num_classes or int(max(truth.max(initial=-1), guess.max(initial=-1), len(total) - 1) + 1)
        if len(truth) and (truth.max() >= k or guess.max() >= k):
            raise CompkitError(f"a class index is {int(max(truth.max(), guess.max()))}, outside 0..{k - 1}")
        matrix = np.bincount(k * truth + guess, minlength=k * k).reshape(k, k)
        if len(total) < k:
            grown = np.zeros((k, k), dtype=np.int64)
            grown[:len(total), :len(total)] = total
            total = grown
        total[:k, :k] += matrix
    return total


def miou(targets: np.ndarray, predictions: np.ndarray, ignore_index: int = 255) -> float:
    """Mean intersection over union over the classes present in the targets or the predictions, from the
    pixel confusion matrix of the whole set (as the VOC benchmark computes it); ``ignore_index`` pixels
    are not scored. Shapes as ``pixel_confusion``."""
    matrix = pixel_confusion(targets, predictions, ignore_index)
    intersection = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - intersection
    if not (union > 0).any():
        raise CompkitError("mean IoU is undefined: every pixel is the ignore index")
    return float((intersection[union > 0] / union[union > 0]).mean())


def pixel_accuracy(targets: np.ndarray, predictions: np.ndarray, ignore_index: int = 255) -> float:
    """Share of the scored pixels (target not ``ignore_index``) whose predicted class is the target's."""
    matrix = pixel_confusion(targets, predictions, ignore_index)
    if not matrix.sum():
        raise CompkitError("pixel accuracy is undefined: every pixel is the ignore index")
    return float(np.diag(matrix).sum() / matrix.sum())


def confusion_table(targets: np.ndarray, probabilities: np.ndarray, names: Sequence[str]) -> str:
    """The confusion matrix (rows: true class, columns: predicted) as aligned text under a title line.

    ``targets``: (N,) class indices; ``probabilities``: (N, C), one column per name in ``names``.
    """
    from sklearn.metrics import confusion_matrix

    targets, probabilities = np.asarray(targets), np.asarray(probabilities)
    names = [str(name) for name in names]
    predicted = _predicted_classes(probabilities)
    matrix = confusion_matrix(targets, predicted, labels=list(range(len(names))))
    side = max(map(len, names))
    widths = [max(len(name), len(str(matrix.max()))) for name in names]
    lines = ["confusion matrix (rows: true class, columns: predicted class):",
             " " * side + "  " + "  ".join(name.rjust(width) for name, width in zip(names, widths))]
    lines += [name.rjust(side) + "  " + "  ".join(str(count).rjust(width) for count, width in zip(row, widths))
              for name, row in zip(names, matrix)]
    return "\n".join(lines)


def _predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.ndim == 2 and probabilities.shape[1] > 1:
        return probabilities.argmax(axis=1)
    return (probabilities.reshape(len(probabilities)) > 0.5).astype(np.int64)


def _binary_columns(targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0/1 targets and scores, both (N, C), from any accepted pair of shapes."""
    if probabilities.ndim == 1:
        probabilities = probabilities[:, None]
    if targets.ndim == 1 and probabilities.shape[1] == 2:
        probabilities = probabilities[:, 1:]
    if targets.ndim == 1 and probabilities.shape[1] == 1:
        targets = targets[:, None]
    elif targets.ndim == 1:
        targets = targets[:, None] == np.arange(probabilities.shape[1])
    if targets.shape != probabilities.shape:
        raise CompkitError(
            f"ROC AUC needs targets (N,) or (N, C) matching probabilities (N, C); "
            f"got {targets.shape} and {probabilities.shape}"
        )
    return targets > 0.5, probabilities


def _column_aucs(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each column, (C,), from the rank-sum (Mann-Whitney U) form."""
    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    single = np.flatnonzero((positives == 0) | (negatives == 0))
    if len(single):
        raise CompkitError(
            f"ROC AUC is undefined for column(s) {single.tolist()}: the targets hold only one class "
            "there; use more rows (or stratified folds) so every class has positives and negatives"
        )
    ranks = rankdata(scores, axis=0)
    positive_rank_sums = (ranks * targets).sum(axis=0)
    return (positive_rank_sums - positives * (positives + 1) / 2) / (positives * negatives)


def _check_rows(targets: np.ndarray, probabilities: np.ndarray) -> None:
    if len(targets) != len(probabilities):
        raise CompkitError(f"{len(targets)} targets but {len(probabilities)} rows of probabilities")


# -- detection: (N,) object arrays of per-image boxes (compkit.boxes); names for Competition.metric --------


def coco_map(targets: np.ndarray, predictions: np.ndarray) -> float:
    """COCO box mAP@[.5:.95], equal to pycocotools' stats[0] (``compkit.boxes.coco_map``)."""
    from compkit import boxes

    return boxes.coco_map(targets, predictions)


def map50(targets: np.ndarray, predictions: np.ndarray) -> float:
    """COCO box mAP at IoU 0.5, equal to pycocotools' stats[1] (``compkit.boxes.map50``)."""
    from compkit import boxes

    return boxes.map50(targets, predictions)


def wheat(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Global Wheat Detection's mean over images of TP / (TP + FP + FN) at IoU 0.5..0.75
    (``compkit.boxes.wheat_score``)."""
    from compkit import boxes

    return boxes.wheat_score(targets, predictions)
