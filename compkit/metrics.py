"""Competition metrics on numpy probabilities: accuracy, mean column ROC AUC, mean image Dice.

Targets and predictions follow the data contract: (N,) class indices or (N, C) targets against
(N, C) probabilities; (N, H, W) masks against (N, H, W) probabilities.
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
