"""The digits plugin: the shared contract, and the demo's real digits in Kaggle's layout."""

import pandas as pd
import pytest

from compkit.testing import CompetitionContract, end_to_end


class TestDigits(CompetitionContract):
    name = "digits"
    module = "compkit_digits"
    image_size = 28


def test_demo_is_in_kaggles_layout(tmp_path):
    from compkit_digits.demo import write_demo

    write_demo(tmp_path, seed=0)
    train = pd.read_csv(tmp_path / "train.csv")
    test = pd.read_csv(tmp_path / "test.csv")
    sample = pd.read_csv(tmp_path / "sample_submission.csv")
    assert list(train.columns[:2]) == ["label", "pixel0"] and train.shape[1] == 785
    assert test.shape[1] == 784 and list(sample.columns) == ["ImageId", "Label"]
    assert len(sample) == len(test) and sample["ImageId"].iloc[0] == 1
    assert set(train["label"]) == set(range(10))
    assert train.iloc[:, 1:].to_numpy().max() == 255


@pytest.mark.slow
def test_demo_end_to_end_learns_real_digits(tmp_path):
    # the demo recipe of competitions/digits-demo.toml: about a minute on two CPU cores
    result = end_to_end("digits", tmp_path, "epochs=8", "batch_size=32", "lr=0.002", "scheduler=onecycle",
                        n_folds=5)
    assert result.best_score > 0.95 > result.baseline
    submission = pd.read_csv(result.submission)
    assert list(submission.columns) == ["ImageId", "Label"]
    truth = pd.read_csv(tmp_path / "data" / "digits" / "test_labels.csv")
    assert (submission["Label"] == truth["Label"]).mean() > 0.9  # held-out real scans
