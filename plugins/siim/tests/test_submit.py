"""Submission rows: masks upscaled to each image's own size and written in the organisers' relative RLE."""

import cv2
import numpy as np
import pandas as pd
import pytest

from compkit import rle
from compkit.errors import CompkitError
from compkit_siim.submit import derived_sample, mask_frame, probability_frame, to_original_size


def table(shapes):
    return pd.DataFrame(
        {
            "ImageId": [f"id{i}" for i in range(len(shapes))],
            "path": "x.dcm",
            "height": [shape[0] for shape in shapes],
            "width": [shape[1] for shape in shapes],
        }
    )


def test_decoding_our_rle_gives_the_upscaled_mask_at_each_images_own_size():
    rng = np.random.default_rng(0)
    predictions = np.zeros((4, 16, 16), dtype=np.uint8)
    predictions[0, 3:9, 2:7] = 1
    predictions[1, 0, 0] = predictions[1, 15, 15] = 1  # touches the first and the last pixel
    predictions[2] = rng.random((16, 16)) > 0.6
    shapes = [(64, 64), (32, 32), (48, 40), (16, 16)]
    frame = mask_frame(table(shapes), predictions)
    assert list(frame.columns) == ["ImageId", "EncodedPixels"] and len(frame) == 4
    for prediction, shape, encoded in zip(predictions, shapes, frame["EncodedPixels"], strict=True):
        decoded = rle.decode(encoded, shape, relative=True)
        expected = (
            cv2.resize(prediction.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
            > 0.5
        )
        assert np.array_equal(decoded, expected)
    assert frame["EncodedPixels"][3] == "-1"  # an empty mask


def test_upscaling_keeps_a_square_where_it_was():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 1
    big = to_original_size(mask, (32, 32))
    assert big.shape == (32, 32) and big.dtype == np.uint8
    # the square covers rows and columns 8..23 at 4x; linear interpolation only rounds its corners
    assert big[9:23, 8:24].all() and big[8:24, 9:23].all()
    assert big.sum() == pytest.approx(16 * 16, abs=8)
    assert not big[:8].any() and not big[24:].any() and not big[:, :8].any() and not big[:, 24:].any()


def test_probabilities_become_one_column_in_the_derived_samples_order():
    sample = pd.DataFrame({"ImageId": ["b", "a"], "EncodedPixels": ["-1", "-1"]})
    derived = derived_sample(sample)
    frame = probability_frame(
        table([(4, 4), (4, 4)]).assign(ImageId=["b", "a"]), np.array([[0.9, 0.1], [0.2, 0.8]])
    )
    assert list(frame.columns) == list(derived.columns) == ["ImageId", "Pneumothorax"]
    assert frame["ImageId"].tolist() == derived["ImageId"].tolist() == ["b", "a"]
    assert frame["Pneumothorax"].tolist() == pytest.approx([0.1, 0.8])


def test_a_prediction_count_that_differs_from_the_table_is_refused():
    with pytest.raises(CompkitError, match="3 test images but 2 predictions"):
        mask_frame(table([(8, 8)] * 3), np.zeros((2, 8, 8)))
