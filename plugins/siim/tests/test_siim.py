"""Both SIIM competitions: the shared contract, and a short demo run from download to a checked submission."""

import numpy as np
import pandas as pd
import pytest

from compkit import metrics, rle, submission
from compkit.testing import CompetitionContract, end_to_end
from compkit_siim.demo import TEST_TRUTH
from compkit_siim.labels import merge_regions, read_labels, regions_by_image


class TestSiim(CompetitionContract):
    name = "siim"
    module = "compkit_siim"
    overrides = {"model": "unet/resnet18"}  # noqa: RUF012 - the default resnet34 would only cost time here


class TestSiimClassification(CompetitionContract):
    name = "siim-classification"
    module = "compkit_siim"


SHORT_RUN = ("image_size=64", "batch_size=8", "warmup_epochs=0", "pretrained=false", "amp=off")


@pytest.mark.slow
def test_demo_segmentation_beats_all_empty_masks(tmp_path):
    result = end_to_end("siim", tmp_path, "model=unet/resnet18", "epochs=4", "lr=0.003", *SHORT_RUN)
    frame = pd.read_csv(result.submission, dtype=str, keep_default_na=False)
    sample = pd.read_csv(
        tmp_path / "data" / "siim" / "sample_submission.csv", dtype=str, keep_default_na=False
    )
    submission.validate(frame, sample)
    assert result.best_score > result.baseline + 0.1, (result.best_score, result.baseline)
    # the submission, decoded at the images' own 256x256, also beats all-empty on the demo's held-out truth
    truth = regions_by_image(read_labels(tmp_path / "data" / "siim" / TEST_TRUTH))
    shape = (256, 256)
    targets = np.stack([merge_regions(truth[image_id], shape) for image_id in frame["ImageId"]])
    predicted = np.stack([rle.decode(value, shape, relative=True) for value in frame["EncodedPixels"]])
    assert metrics.dice(targets, predicted) > metrics.dice(targets, np.zeros_like(targets))


@pytest.mark.slow
def test_demo_classification_beats_a_constant(tmp_path):
    result = end_to_end(
        "siim-classification", tmp_path, "model=timm/resnet18", "epochs=4", "lr=0.003", *SHORT_RUN
    )
    frame = pd.read_csv(result.submission, dtype={"ImageId": str})
    assert list(frame.columns) == ["ImageId", "Pneumothorax"] and frame["Pneumothorax"].between(0, 1).all()
    assert result.best_score > result.baseline, (result.best_score, result.baseline)
