"""Tests for compkit.postprocess: apply() does what the params say; search() finds the winning params."""

from __future__ import annotations

import numpy as np
import pytest

from compkit import metrics, postprocess
from compkit.errors import CompkitError


def disc(size: int, row: int, column: int, radius: int) -> np.ndarray:
    rows, columns = np.mgrid[:size, :size]
    return (rows - row) ** 2 + (columns - column) ** 2 <= radius**2


def specks_and_blobs(count: int = 12, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Truth: a disc in every other image. Probabilities: 0.42 on the discs (under the usual 0.5)
    and confident 2x2 specks in the background, which only a component filter removes."""
    rng = np.random.default_rng(0)
    targets = np.zeros((count, size, size), dtype=np.uint8)
    probabilities = rng.uniform(0.0, 0.2, size=(count, size, size))
    for image in range(count):
        if image % 2:
            targets[image] = disc(size, 16, 16, 6)
            probabilities[image][targets[image] == 1] = 0.42
        row, column = rng.integers(0, 4, size=2)
        probabilities[image, row : row + 2, column : column + 2] = 0.95
    return probabilities, targets


def test_apply_threshold_only():
    probabilities = np.array([[[0.2, 0.6], [0.5, 0.9]]])
    np.testing.assert_array_equal(postprocess.apply(probabilities, {"threshold": 0.5}), [[[0, 1], [0, 1]]])
    masks = postprocess.apply(probabilities, {"threshold": 0.1, "min_area": 0})
    assert masks.dtype == np.uint8 and masks.all()


def test_apply_min_area_uses_8_connectivity_within_each_image():
    probabilities = np.zeros((2, 5, 5))
    probabilities[0, 0, 0] = probabilities[0, 1, 1] = probabilities[0, 2, 2] = (
        0.9  # diagonal: one component of 3
    )
    probabilities[0, 4, 4] = 0.9  # a single pixel
    probabilities[1, 0, 0] = probabilities[1, 1, 1] = (
        0.9  # 2 pixels, touching image 0's pixels only through N
    )
    masks = postprocess.apply(probabilities, {"threshold": 0.5, "min_area": 3})
    expected = np.zeros((2, 5, 5), dtype=np.uint8)
    expected[0, [0, 1, 2], [0, 1, 2]] = 1
    np.testing.assert_array_equal(masks, expected)


def test_apply_winners_rule_empties_images_without_enough_confident_pixels():
    probabilities = np.full((3, 4, 4), 0.1)
    probabilities[0, :2, :2] = 0.6  # no pixel above the top threshold
    probabilities[1, :2, :2] = 0.6
    probabilities[1, 0, 0] = 0.95  # one pixel above it: not enough
    probabilities[2, :2, :2] = 0.95
    probabilities[2, 2, :] = 0.6  # cut at the lower threshold once the image passes
    params = {"threshold": 0.5, "min_area": 0, "top_threshold": 0.9, "min_top_pixels": 2}
    masks = postprocess.apply(probabilities, params)
    assert not masks[0].any() and not masks[1].any()
    np.testing.assert_array_equal(masks[2], probabilities[2] > 0.5)


def test_apply_empty_input_and_empty_images():
    assert postprocess.apply(np.zeros((0, 4, 4)), {"threshold": 0.5, "min_area": 5}).shape == (0, 4, 4)
    masks = postprocess.apply(np.zeros((2, 4, 4)), {"threshold": 0.5, "min_area": 5})
    assert masks.shape == (2, 4, 4) and not masks.any()


def test_apply_rejects_bad_params_and_shapes():
    with pytest.raises(CompkitError, match="threshold"):
        postprocess.apply(np.zeros((1, 2, 2)), {"min_area": 3})
    with pytest.raises(CompkitError, match="min_ares"):
        postprocess.apply(np.zeros((1, 2, 2)), {"threshold": 0.5, "min_ares": 3})
    with pytest.raises(CompkitError, match="together"):
        postprocess.apply(np.zeros((1, 2, 2)), {"threshold": 0.5, "top_threshold": 0.9})
    with pytest.raises(CompkitError, match=r"\(N, H, W\)"):
        postprocess.apply(np.zeros((1, 1, 2, 2)), {"threshold": 0.5})


def test_search_must_lower_the_threshold_and_filter_components():
    probabilities, targets = specks_and_blobs()
    assert metrics.dice(targets, probabilities) < 0.5
    params = postprocess.search(probabilities, targets, min_areas=[0, 2, 5, 50, 500])
    assert 0.2 <= params["threshold"] < 0.42
    assert params["min_area"] == 5  # removes the 4-pixel specks, keeps the 113-pixel discs
    assert params["score"] == pytest.approx(1.0)
    np.testing.assert_array_equal(postprocess.apply(probabilities, params), targets)


def test_search_score_is_the_dice_of_apply():
    rng = np.random.default_rng(1)
    probabilities = rng.random((6, 16, 16))
    targets = rng.random((6, 16, 16)) > 0.6
    targets[0] = False
    for triple in (False, True):
        params = postprocess.search(probabilities, targets, triple=triple)
        assert params["score"] == pytest.approx(
            metrics.dice(targets, postprocess.apply(probabilities, params))
        )
        # No grid point scores higher than the chosen one.
        for threshold in postprocess.DEFAULT_THRESHOLDS[::4]:
            other = metrics.dice(
                targets, postprocess.apply(probabilities, {"threshold": threshold, "min_area": 0})
            )
            assert other <= params["score"] + 1e-12


def test_search_triple_empties_false_positive_images():
    size = 32
    probabilities = np.full((8, size, size), 0.05)
    targets = np.zeros((8, size, size), dtype=np.uint8)
    for image in range(8):
        blob = disc(size, 16, 16, 8)
        if image % 2:
            # A true lesion: a confident core and an uncertain rim.
            targets[image] = blob
            probabilities[image][blob] = 0.55
            probabilities[image][disc(size, 16, 16, 2)] = 0.97
        else:
            # A large false positive, never above 0.7: no component filter separates it.
            probabilities[image][blob] = 0.7
    plain = postprocess.search(probabilities, targets)
    triple = postprocess.search(probabilities, targets, triple=True)
    assert plain["score"] < 0.9
    assert triple["score"] == pytest.approx(1.0)
    assert triple["threshold"] < 0.55 and triple["top_threshold"] >= 0.7
    np.testing.assert_array_equal(postprocess.apply(probabilities, triple), targets)


def test_search_with_all_empty_truth_and_predictions_scores_one():
    params = postprocess.search(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)))
    assert params["score"] == 1.0
    assert set(params) == {"threshold", "min_area", "score"}


def test_search_rejects_mismatched_shapes():
    with pytest.raises(CompkitError, match="differ in shape"):
        postprocess.search(np.zeros((3, 8, 8)), np.zeros((3, 8, 9)))
