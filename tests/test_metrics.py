"""Tests for compkit.metrics against hand-computed values and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from compkit import metrics
from compkit.errors import CompkitError


def test_accuracy_from_class_indices_and_one_hot():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.4, 0.35, 0.25]])
    indices = np.array([0, 2, 0, 1])
    assert metrics.accuracy(indices, probabilities) == 0.5
    assert metrics.accuracy(np.eye(3)[indices], probabilities) == 0.5
    soft = np.eye(3)[indices] * 0.9 + 0.1 / 3
    assert metrics.accuracy(soft, probabilities) == 0.5


def test_accuracy_binary_probabilities_cut_at_half():
    assert metrics.accuracy(np.array([1, 0, 1]), np.array([0.9, 0.6, 0.4])) == pytest.approx(1 / 3)
    assert metrics.accuracy(np.array([1, 0, 1]), np.array([[0.9], [0.2], [0.7]])) == 1.0


def test_accuracy_length_mismatch_raises():
    with pytest.raises(CompkitError, match="3 targets but 2 rows"):
        metrics.accuracy(np.array([0, 1, 1]), np.ones((2, 2)))


def test_roc_auc_hand_computed_binary():
    targets = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # Pairs (positive, negative): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4.
    assert metrics.roc_auc(targets, scores) == 0.75
    assert metrics.roc_auc(targets, scores[:, None]) == 0.75
    assert metrics.roc_auc(targets, np.stack([1 - scores, scores], axis=1)) == 0.75


def test_roc_auc_ties_count_half():
    assert metrics.roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_roc_auc_multiclass_is_mean_of_columns_and_matches_sklearn():
    rng = np.random.default_rng(0)
    classes = np.arange(40) % 4
    probabilities = rng.dirichlet(np.ones(4), size=40)
    probabilities[classes == 2, 2] += 0.3
    probabilities = np.round(probabilities, 2)  # ties, to exercise the rank averaging
    one_hot = np.eye(4)[classes]
    expected = np.mean([roc_auc_score(one_hot[:, c], probabilities[:, c]) for c in range(4)])
    assert metrics.roc_auc(classes, probabilities) == pytest.approx(expected)
    assert metrics.roc_auc(one_hot, probabilities) == pytest.approx(expected)
    assert expected == pytest.approx(roc_auc_score(one_hot, probabilities, average="macro"))


def test_roc_auc_multilabel_targets():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.3], [0.6, 0.8], [0.7, 0.2]])
    # Column 0: positives 0.9, 0.6 vs negatives 0.2, 0.7 -> 3/4; column 1: 0.3, 0.8 vs 0.1, 0.2 -> 1.
    assert metrics.roc_auc(targets, probabilities) == pytest.approx(0.875)


def test_roc_auc_single_class_column_is_named():
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1]])
    with pytest.raises(CompkitError, match=r"column\(s\) \[1\]"):
        metrics.roc_auc(targets, np.random.default_rng(0).random((3, 3)))
    with pytest.raises(CompkitError, match=r"\[0\]"):
        metrics.roc_auc(np.array([1, 1, 1]), np.array([0.2, 0.4, 0.5]))


def test_roc_auc_shape_mismatch_raises():
    with pytest.raises(CompkitError, match="matching"):
        metrics.roc_auc(np.zeros((4, 2)), np.zeros((4, 3)))


def masks(*rows: str) -> np.ndarray:
    """One (1, H, W) mask from strings of 0/1."""
    return np.array([[list(map(int, row)) for row in rows]], dtype=np.uint8)


def test_dice_hand_computed():
    truth = np.concatenate(
        [masks("110", "000"), masks("000", "000"), masks("000", "000"), masks("111", "000")]
    )
    guess = np.concatenate(
        [masks("100", "100"), masks("000", "000"), masks("010", "000"), masks("000", "000")]
    )
    # Image 0: 2*1/(2+2); image 1: both empty -> 1; image 2: false positive -> 0; image 3: missed -> 0.
    np.testing.assert_allclose(metrics.dice_per_image(truth, guess), [0.5, 1.0, 0.0, 0.0])
    assert metrics.dice(truth, guess) == pytest.approx(0.375)


def test_dice_thresholds_probabilities():
    truth = masks("11", "00")
    probabilities = np.array([[[0.9, 0.4], [0.45, 0.1]]])
    assert metrics.dice(truth, probabilities) == pytest.approx(2 * 1 / 3)
    assert metrics.dice(truth, probabilities, threshold=0.3) == pytest.approx(2 * 2 / 5)
    assert metrics.dice(truth * 255, probabilities, threshold=0.3) == pytest.approx(2 * 2 / 5)
    assert metrics.dice(truth.astype(bool), truth.astype(bool)) == 1.0


def test_dice_accepts_a_channel_axis_and_rejects_mismatched_shapes():
    truth = np.ones((2, 1, 3, 3))
    assert metrics.dice(truth, truth * 0.9) == 1.0
    with pytest.raises(CompkitError, match="same shape"):
        metrics.dice(np.ones((2, 3, 3)), np.ones((2, 3, 4)))


def test_dice_from_counts():
    np.testing.assert_allclose(metrics.dice_from_counts([0, 1, 0], [0, 4, 3]), [1.0, 0.5, 0.0])
