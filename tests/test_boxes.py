"""Tests for compkit.boxes: COCO mAP against pycocotools, the wheat metric against a plain re-implementation,
merging, selection, flips and PredictionString."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from compkit import boxes, metrics
from compkit.competition import Competition
from compkit.errors import CompkitError

# -- helpers -----------------------------------------------------------------------------------------------


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """float32 [count, 4] normalised xyxy boxes of positive size."""
    corner = rng.uniform(0, 0.85, (count, 2))
    size = rng.uniform(0.03, 0.25, (count, 2))
    return np.concatenate([corner, np.minimum(corner + size, 1)], axis=1).astype(np.float32)


def jittered(rng: np.random.Generator, box: np.ndarray, scale: float) -> np.ndarray:
    """``box`` [K, 4] with each corner moved by about ``scale`` times the box's size (and each box a random
    share of that, so IoUs with the original spread over 0.3..1)."""
    size = np.tile(box[:, 2:] - box[:, :2], 2)
    moved = np.clip(box + rng.normal(0, 1, box.shape) * size * scale * rng.random((len(box), 1)), 0, 1)
    low, high = np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:])
    return np.concatenate([low, np.maximum(high, low + 1e-3)], axis=1).clip(0, 1).astype(np.float32)


def random_case(rng: np.random.Generator, images: int = 8, classes: int = 3, tied: bool = False):
    """Targets and predictions over several images: empty images, images without predictions, jittered
    hits, wrong labels, exact duplicates and pure false positives."""
    targets, predictions = [], []
    for index in range(images):
        count = 0 if index == 0 else int(rng.integers(0, 7))
        label = rng.integers(0, classes, count).astype(np.float32)
        truth = random_boxes(rng, count)
        targets.append(np.column_stack([label, truth]).astype(np.float32).reshape(-1, 5))
        if index == 1:
            predictions.append(np.zeros((0, 6), np.float32))
            continue
        found = rng.random(count) < 0.8
        guess = jittered(rng, truth[found], 0.25)
        guess_label = np.where(rng.random(found.sum()) < 0.9, label[found], rng.integers(0, classes, found.sum()))
        extra = int(rng.integers(0, 4))
        guess = np.concatenate([guess, random_boxes(rng, extra)])
        guess_label = np.concatenate([guess_label, rng.integers(0, classes + 1, extra)])
        if len(guess):
            copies = rng.integers(0, len(guess), int(rng.integers(0, 3)))
            guess, guess_label = np.concatenate([guess, guess[copies]]), np.concatenate([guess_label, guess_label[copies]])
        score = rng.random(len(guess))
        score = np.round(score, 1) if tied else score
        rows = np.column_stack([score, guess_label, guess]).astype(np.float32).reshape(-1, 6)
        predictions.append(rows if tied else rows[np.argsort(-rows[:, 0], kind="stable")])  # unsorted too
    return boxes.ragged(targets, 5), boxes.ragged(predictions, 6)


def pycocotools_stats(targets, predictions) -> tuple[float, float]:
    """COCOeval stats[0], stats[1] with the boxes scaled to pixels (x 1000) in xywh."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        x1, y1, x2, y2 = (float(value) * 1000 for value in box)
        return [x1, y1, x2 - x1, y2 - y1]

    annotations = []
    for image, target in enumerate(targets):
        for row in target:
            x, y, w, h = xywh(row[1:])
            annotations.append({"id": len(annotations) + 1, "image_id": image + 1, "category_id": int(row[0]) + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    labels = {int(row[0]) for target in targets for row in target} | {int(row[1]) for rows in predictions
                                                                      for row in rows}
    results = [{"image_id": image + 1, "category_id": int(row[1]) + 1, "bbox": xywh(row[2:]), "score": float(row[0])}
               for image, rows in enumerate(predictions) for row in rows]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": [{"id": index + 1, "width": 1000, "height": 1000} for index in range(len(targets))],
                         "annotations": annotations, "categories": [{"id": label + 1} for label in sorted(labels)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def plain_wheat(targets, predictions, thresholds) -> float:
    """Global Wheat Detection's metric from its published definition, in plain Python loops."""

    def iou(a, b):
        width = min(a[2], b[2]) - max(a[0], b[0])
        height = min(a[3], b[3]) - max(a[1], b[1])
        if width <= 0 or height <= 0:
            return 0.0
        inter = width * height
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    images = []
    for target, prediction in zip(targets, predictions):
        truth = [list(map(float, row[1:])) for row in target]
        guess = [list(map(float, row[2:])) for row in sorted(prediction.tolist(), key=lambda row: -row[0])]
        if not truth and not guess:
            images.append(1.0)
            continue
        precisions = []
        for threshold in thresholds:
            matched, true = set(), 0
            for box in guess:
                best, best_iou = None, -1.0
                for index, other in enumerate(truth):
                    value = iou(box, other)
                    if index not in matched and value > threshold and value > best_iou:
                        best, best_iou = index, value
                if best is not None:
                    matched.add(best)
                    true += 1
            false_positive, false_negative = len(guess) - true, len(truth) - true
            precisions.append(true / (true + false_positive + false_negative))
        images.append(sum(precisions) / len(precisions))
    return sum(images) / len(images)


def grid_predictions(rng: np.random.Generator, images: int, classes: int = 2):
    """Predictions whose boxes never overlap (one box per cell of a 4 x 4 grid), distinct scores."""
    out = []
    for _ in range(images):
        cells = rng.permutation(16)[: int(rng.integers(0, 6))]
        corner = np.stack([cells % 4, cells // 4], axis=1) * 0.25 + rng.uniform(0, 0.05, (len(cells), 2))
        box = np.concatenate([corner, corner + rng.uniform(0.05, 0.19, (len(cells), 2))], axis=1)
        score = np.sort(rng.choice(np.arange(1, 100), len(cells), replace=False) / 100)[::-1]
        out.append(np.column_stack([score, rng.integers(0, classes, len(cells)), box]).astype(np.float32).reshape(-1, 6))
    return boxes.ragged(out, 6)


def one(rows, columns=6):
    return boxes.ragged([np.asarray(rows, np.float32).reshape(-1, columns)], columns)


# -- validation --------------------------------------------------------------------------------------------


def test_ragged_accepts_lists_and_empty_images():
    out = boxes.ragged([[], [[0.9, 1, 0.1, 0.1, 0.2, 0.2]], np.zeros((0, 6))], 6)
    assert out.dtype == object and out.shape == (3,)
    assert [rows.shape for rows in out] == [(0, 6), (1, 6), (0, 6)]
    assert all(rows.dtype == np.float32 for rows in out)


@pytest.mark.parametrize("row, found", [
    ([0.5, 0, 0.1, 0.1, 1.2, 0.5], "1.2"), ([0.5, 0, 0.1, np.nan, 0.2, 0.5], "nan"),
    ([0.5, 0, 0.4, 0.1, 0.2, 0.5], "x2 < x1"), ([0.5, 0, 0.1, 0.6, 0.2, 0.5], "x2 < x1 or y2 < y1"),
])
def test_check_names_the_image_and_the_value(row, found):
    predictions = boxes.ragged([np.zeros((0, 6)), [[0.9, 0, 0.1, 0.1, 0.2, 0.2], row]], 6)
    with pytest.raises(CompkitError, match="image 1, row 1") as error:
        boxes.check(predictions, "predictions")
    assert found in str(error.value)


def test_check_wrong_columns_and_tolerance():
    with pytest.raises(CompkitError, match=r"image 0.*\[K, 6\].*\(1, 5\)"):
        boxes.check([[[0.9, 0.1, 0.1, 0.2, 0.2]]], "predictions")
    clipped = boxes.check([[[0.9, 0, -1e-6, 0.1, 1 + 1e-6, 0.2]]], "predictions")[0]
    assert clipped[0, 2] == 0 and clipped[0, 4] == 1


# -- COCO mAP ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_coco_map_equals_pycocotools_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    targets, predictions = random_case(rng, images=int(rng.integers(3, 10)), classes=int(rng.integers(2, 4)),
                                       tied=seed % 2 == 1)
    expected = pycocotools_stats(targets, predictions)
    assert boxes.coco_map(targets, predictions) == pytest.approx(expected[0], abs=1e-6)
    assert boxes.map50(targets, predictions) == pytest.approx(expected[1], abs=1e-6)


def test_coco_map_keeps_the_top_100_of_an_image_and_ties_between_equal_ground_truths():
    rng = np.random.default_rng(11)
    truth = random_boxes(rng, 30)
    truth = np.concatenate([truth, truth[:5]])  # equal ground-truth boxes: the IoU tie rule decides the match
    targets = boxes.ragged([np.column_stack([np.zeros(len(truth)), truth])], 5)
    guess = np.concatenate([jittered(rng, truth, 0.25), random_boxes(rng, 90)])
    score = rng.random(len(guess))
    predictions = boxes.ragged([np.column_stack([score, np.zeros(len(guess)), guess])], 6)
    expected = pycocotools_stats(targets, predictions)
    assert boxes.coco_map(targets, predictions) == pytest.approx(expected[0], abs=1e-6)
    assert boxes.map50(targets, predictions) == pytest.approx(expected[1], abs=1e-6)
    assert boxes.coco_map(targets, predictions, max_detections=200) != pytest.approx(expected[0], abs=1e-6)


def test_coco_map_hand_made_cases():
    square = [0, 0, 1, 1]
    targets = one([[0, *square]], 5)
    assert boxes.coco_map(targets, one([[0.9, 0, *square]])) == pytest.approx(1.0)  # pycocotools: 1 - 2e-16
    half = one([[0.9, 0, 0, 0, 0.5, 1]])  # IoU exactly 0.5: a hit at 0.5 (COCO's >=), a miss above
    assert boxes.coco_map(targets, half) == pytest.approx(0.1)
    assert boxes.map50(targets, half) == pytest.approx(1.0)
    assert pycocotools_stats(targets, half) == pytest.approx((0.1, 1.0))
    # a false positive scored above the hit: precision 1/2 at every recall
    targets = one([[0, 0.1, 0.1, 0.3, 0.3]], 5)
    fp_first = one([[0.9, 0, 0.6, 0.6, 0.8, 0.8], [0.8, 0, 0.1, 0.1, 0.3, 0.3]])
    assert boxes.coco_map(targets, fp_first) == pytest.approx(0.5)
    # a duplicate of a hit is a false positive: recall 1/2 at precision 1, then recall 1 at precision 2/3
    targets = one([[0, 0.1, 0.1, 0.3, 0.3], [0, 0.6, 0.6, 0.8, 0.8]], 5)
    duplicate = one([[0.9, 0, 0.1, 0.1, 0.3, 0.3], [0.8, 0, 0.1, 0.1, 0.3, 0.3], [0.7, 0, 0.6, 0.6, 0.8, 0.8]])
    assert boxes.coco_map(targets, duplicate) == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert pycocotools_stats(targets, duplicate)[0] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_an_iou_tie_between_two_ground_truths():
    # the first prediction overlaps both ground truths with IoU exactly 0.6; the second is the first box.
    # pycocotools gives the tie to the last box, so both predictions hit at IoU 0.5..0.6; the wheat kernels
    # give it to the first, so the second prediction misses
    targets = one([[0, 0, 0, 0.5, 1], [0, 0.25, 0, 0.75, 1]], 5)
    predictions = one([[0.9, 0, 0.125, 0, 0.625, 1], [0.8, 0, 0, 0, 0.5, 1]])
    expected = (3 * 1.0 + 7 * (51 * 0.5 / 101)) / 10
    assert boxes.coco_map(targets, predictions) == pytest.approx(expected)
    assert pycocotools_stats(targets, predictions)[0] == pytest.approx(expected)
    assert boxes.wheat_score(targets, predictions) == pytest.approx(1 / 3)
    assert plain_wheat(targets, predictions, boxes.WHEAT_THRESHOLDS) == pytest.approx(1 / 3)


def test_coco_map_mean_over_classes_with_ground_truth_only():
    targets = boxes.ragged([[[0, 0.1, 0.1, 0.3, 0.3], [1, 0.5, 0.5, 0.9, 0.9]]], 5)
    only_first = boxes.ragged([[[0.9, 0, 0.1, 0.1, 0.3, 0.3]]], 6)
    assert boxes.coco_map(targets, only_first) == pytest.approx(0.5)
    extra_class = boxes.ragged([[[0.9, 0, 0.1, 0.1, 0.3, 0.3], [0.8, 5, 0.5, 0.5, 0.9, 0.9]]], 6)
    assert boxes.coco_map(targets, extra_class) == pytest.approx(0.5)
    no_predictions = boxes.ragged([[]], 6)
    assert boxes.coco_map(targets, no_predictions) == 0.0


def test_coco_map_without_any_ground_truth_raises_where_pycocotools_gives_minus_one():
    targets = boxes.ragged([[], []], 5)
    predictions = boxes.ragged([[[0.9, 0, 0.1, 0.1, 0.3, 0.3]], []], 6)
    assert pycocotools_stats(targets, predictions) == (-1.0, -1.0)
    for metric in (boxes.coco_map, boxes.map50):
        with pytest.raises(CompkitError, match="no box"):
            metric(targets, predictions)


def test_metrics_reject_mismatched_image_counts():
    with pytest.raises(CompkitError, match="2 images of targets but 1"):
        boxes.coco_map(boxes.ragged([[], []], 5), boxes.ragged([[]], 6))


# -- wheat -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_wheat_equals_a_plain_reimplementation(seed):
    rng = np.random.default_rng(100 + seed)
    targets, predictions = random_case(rng, images=int(rng.integers(3, 12)), tied=seed % 2 == 1)
    thresholds = np.arange(0.5, 0.76, 0.05)
    expected = plain_wheat(targets, predictions, thresholds)
    assert boxes.wheat_score(targets, predictions) == pytest.approx(expected, abs=1e-9)
    per_image = boxes.wheat_image_scores(targets, predictions, thresholds)
    assert per_image.shape == (len(targets),)
    assert per_image == pytest.approx([plain_wheat(targets[i:i + 1], predictions[i:i + 1], thresholds)
                                       for i in range(len(targets))], abs=1e-9)


def test_wheat_hand_made_cases():
    targets = one([[0, 0, 0, 1, 1]], 5)
    assert boxes.wheat_score(targets, one([[0.9, 0, 0, 0, 0.5, 1]])) == 0.0  # IoU 0.5 is not > 0.5
    assert boxes.wheat_score(targets, one([[0.9, 3, 0, 0, 1, 1]])) == 1.0  # labels are ignored
    two = one([[0, 0.1, 0.1, 0.3, 0.3], [0, 0.6, 0.6, 0.8, 0.8]], 5)
    duplicate = one([[0.9, 0, 0.1, 0.1, 0.3, 0.3], [0.8, 0, 0.1, 0.1, 0.3, 0.3], [0.7, 0, 0.6, 0.6, 0.8, 0.8]])
    assert boxes.wheat_score(two, duplicate) == pytest.approx(2 / 3)  # TP 2, FP 1, FN 0
    empty_targets, empty_predictions = boxes.ragged([[]], 5), boxes.ragged([[]], 6)
    assert boxes.wheat_score(empty_targets, empty_predictions) == 1.0
    assert boxes.wheat_score(empty_targets, one([[0.9, 0, 0.1, 0.1, 0.3, 0.3]])) == 0.0
    assert boxes.wheat_score(two, empty_predictions) == 0.0
    # IoU 0.58 (a box covering 0.58 of the ground truth): a hit at 0.5 and 0.55 only -> 2 / 6
    assert boxes.wheat_score(targets, one([[0.9, 0, 0, 0, 0.58, 1]])) == pytest.approx(2 / 6)
    assert boxes.wheat_image_scores(targets, one([[0.9, 0, 0, 0, 0.58, 1]]), [0.5]) == pytest.approx([1.0])


# -- merging -----------------------------------------------------------------------------------------------


def test_wbf_of_identical_copies_is_the_input():
    predictions = grid_predictions(np.random.default_rng(0), 6)
    for copies in (1, 3):
        merged = boxes.merge([predictions] * copies, "wbf")
        for got, want in zip(merged, predictions):
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("method", ["nms", "soft-nms"])
def test_one_view_returns_itself(method):
    predictions = grid_predictions(np.random.default_rng(1), 6)
    for got, want in zip(boxes.merge([predictions], method), predictions):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("method", boxes.METHODS)
def test_merge_shapes_ordering_and_empty_images(method):
    rng = np.random.default_rng(2)
    _, base = random_case(rng, images=6)
    views = [boxes.ragged([np.column_stack([rows[:, :2], jittered(rng, rows[:, 2:], 0.1)]) for rows in base], 6)
             for _ in range(3)]
    views[1][2] = np.zeros((0, 6), np.float32)
    merged = boxes.merge(views, method, iou=0.5)
    assert merged.dtype == object and len(merged) == len(base)
    for index, rows in enumerate(merged):
        assert rows.dtype == np.float32 and rows.shape[1] == 6
        assert np.all(np.diff(rows[:, 0]) <= 0)
        assert np.all((rows[:, 2:] >= 0) & (rows[:, 2:] <= 1))
        assert len(rows) <= sum(len(view[index]) for view in views)
        assert len(rows) == 0 or set(rows[:, 1]) <= set(np.concatenate([view[index][:, 1] for view in views]))
    assert len(merged[1]) == 0  # no view has a box there


def test_wbf_fuses_two_views_into_the_mean_box():
    first = one([[0.8, 0, 0.1, 0.1, 0.3, 0.3]])
    second = one([[0.8, 0, 0.12, 0.1, 0.32, 0.3]])
    merged = boxes.merge([first, second], "wbf")[0]
    np.testing.assert_allclose(merged, [[0.8, 0, 0.11, 0.1, 0.31, 0.3]], atol=1e-6)


def test_merge_errors():
    predictions = grid_predictions(np.random.default_rng(3), 3)
    with pytest.raises(CompkitError, match="wbf, nms, soft-nms"):
        boxes.merge([predictions], "mean")
    with pytest.raises(CompkitError, match=r"same images.*\[3, 2\]"):
        boxes.merge([predictions, predictions[:2]])
    with pytest.raises(CompkitError, match="2 merge weights for 1 view"):
        boxes.merge([predictions], weights=[1, 2])
    bad = boxes.ragged([[[0.9, 0, 0.1, 0.1, 1.5, 0.3]]], 6)  # ensemble-boxes would clip or exit() on its own
    with pytest.raises(CompkitError, match="view 1, image 0, row 0"):
        boxes.merge([one([[0.9, 0, 0.1, 0.1, 0.3, 0.3]]), bad])


# -- selection ---------------------------------------------------------------------------------------------


def test_select_identity_threshold_and_classwise_nms():
    _, predictions = random_case(np.random.default_rng(4), images=6)
    for got, want in zip(boxes.select(predictions), predictions):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(boxes.select(predictions, 0.5), predictions):
        np.testing.assert_array_equal(got, want[want[:, 0] >= 0.5])
    rows = one([[0.9, 0, 0.1, 0.1, 0.3, 0.3], [0.8, 0, 0.11, 0.1, 0.31, 0.3], [0.7, 1, 0.1, 0.1, 0.3, 0.3]])
    np.testing.assert_array_equal(boxes.select(rows, iou=0.5)[0], rows[0][[0, 2]])
    assert len(boxes.select(rows, iou=0.99)[0]) == 3


def test_search_finds_the_brute_force_pair():
    rng = np.random.default_rng(5)
    targets, predictions = random_case(rng, images=10, classes=1)
    thresholds, ious = [0.0, 0.2, 0.4, 0.6, 0.8], [None, 0.3, 0.5, 0.7]
    for score, higher in ((boxes.wheat_score, True), (lambda t, p: -boxes.coco_map(t, p), False)):
        found = boxes.search(targets, predictions, score, thresholds, ious, higher_is_better=higher)
        values = {(t, i): score(targets, boxes.select(predictions, t, i)) for i in ious for t in thresholds}
        best = (max if higher else min)(values.values())
        assert found["score"] == pytest.approx(best)
        assert values[(found["threshold"], found["iou"])] == pytest.approx(best)
    with pytest.raises(CompkitError, match="at least one"):
        boxes.search(targets, predictions, boxes.wheat_score, [], ious)


# -- flips -------------------------------------------------------------------------------------------------


def test_flip_is_an_involution_on_numpy_and_torch():
    box = random_boxes(np.random.default_rng(6), 7)
    for horizontal, vertical in ((True, False), (False, True), (True, True), (False, False)):
        for data in (box, torch.from_numpy(box.copy())):
            flipped = boxes.flip(data, horizontal, vertical)
            assert type(flipped) is type(data)
            back = np.asarray(boxes.flip(flipped, horizontal, vertical))
            np.testing.assert_allclose(back, box, atol=1e-6)
            assert np.all(np.asarray(flipped)[:, 2:] >= np.asarray(flipped)[:, :2])
    np.testing.assert_array_equal(np.asarray(box), random_boxes(np.random.default_rng(6), 7))  # input untouched


def test_flip_maps_the_top_left_corner():
    corner = np.array([[0.0, 0.0, 0.2, 0.1]], np.float32)
    np.testing.assert_allclose(boxes.flip(corner, True, False), [[0.8, 0.0, 1.0, 0.1]], atol=1e-7)
    np.testing.assert_allclose(boxes.flip(corner, False, True), [[0.0, 0.9, 0.2, 1.0]], atol=1e-7)
    np.testing.assert_allclose(boxes.flip(torch.tensor(corner), True, True).numpy(), [[0.8, 0.9, 1.0, 1.0]], atol=1e-7)


# -- PredictionString --------------------------------------------------------------------------------------


def test_prediction_string_round_trip():
    rng = np.random.default_rng(7)
    width, height = 1024, 768
    box = random_boxes(rng, 20)
    rows = np.column_stack([rng.random(20), np.zeros(20), box]).astype(np.float32)
    parsed = boxes.parse_prediction_string(boxes.prediction_string(rows, width, height))
    assert parsed.shape == (20, 5) and parsed.dtype == np.float32
    rows = rows[np.argsort(-rows[:, 0], kind="stable")]
    pixels = rows[:, 2:] * [width, height, width, height]
    np.testing.assert_allclose(parsed[:, 0], rows[:, 0], atol=5e-5)
    np.testing.assert_allclose(parsed[:, 1:3], pixels[:, :2], atol=0.5 + 1e-3)
    np.testing.assert_allclose(parsed[:, 1:3] + parsed[:, 3:], pixels[:, 2:], atol=0.5 + 1e-3)
    assert np.all(parsed[:, 1:] == np.round(parsed[:, 1:]))


def test_prediction_string_format_and_empty():
    assert boxes.prediction_string(np.zeros((0, 6)), 100, 50) == ""
    text = boxes.prediction_string([[0.12345, 0, 0.1, 0.2, 0.5, 1.00001]], 100, 50)
    assert text == "0.1235 10 10 40 40"
    assert boxes.parse_prediction_string("").shape == (0, 5)
    assert boxes.parse_prediction_string(float("nan")).shape == (0, 5)


@pytest.mark.parametrize("text, found", [
    ("0.9 1 2 3", "4 numbers"), ("0.9 1 2 3 x", "'x'"), ("0.9 1 2 -3 4", "negative w ('-3')"),
    ("0.9 1 2 3 4 0.5 1 2 3 -1", "box 1 has a negative h"), ("0.9 1 2 3 inf", "'inf'"),
])
def test_parse_prediction_string_errors_name_the_row_and_token(text, found):
    with pytest.raises(CompkitError, match="row 7") as error:
        boxes.parse_prediction_string(text, row=7)
    assert found in str(error.value)


def test_prediction_strings_frame():
    predictions = boxes.ragged([[[0.5, 0, 0.0, 0.0, 0.5, 0.5]], []], 6)
    frame = boxes.prediction_strings(["a", "b"], predictions, [200, 100], 100)
    assert list(frame.columns) == ["image_id", "PredictionString"]
    assert frame["PredictionString"].tolist() == ["0.5000 0 0 100 50", ""]
    with pytest.raises(CompkitError, match="3 image ids but 2"):
        boxes.prediction_strings(["a", "b", "c"], predictions, 100, 100)


# -- metric names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, function", [("coco-map", boxes.coco_map), ("map50", boxes.map50),
                                            ("wheat", boxes.wheat_score)])
def test_competition_score_by_metric_name(name, function):
    class Detection(Competition):
        metric = name

    targets, predictions = random_case(np.random.default_rng(8), images=6)
    assert Detection().score(targets, predictions) == function(targets, predictions)
    assert getattr(metrics, name.replace("-", "_"))(targets, predictions) == function(targets, predictions)
