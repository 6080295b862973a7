"""The hotdog plugin: the shared contract, the folder tables, the Kaggle-style test files, offline weights, a demo run."""

import os
import subprocess
import sys

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from compkit import registry, submission
from compkit.errors import CompkitError
from compkit.testing import CompetitionContract, demo_fixtures, end_to_end

NAME = "hotdog"


class TestHotdog(CompetitionContract):
    name = NAME
    module = "compkit_hotdog"


competition, root = demo_fixtures(NAME)


def test_train_table_lists_both_class_folders(competition, root):
    table = competition.train_table(root)
    assert table["label"].value_counts().to_dict() == {"hotdog": 40, "not-hotdog": 40}
    assert table["id"].is_unique and table["id"][0] == "hotdog/0"
    assert table["id"].tolist()[:3] == ["hotdog/0", "hotdog/1", "hotdog/2"]  # numeric, not text, order
    assert (table["target"] == table["label"].map({"hotdog": 0, "not-hotdog": 1})).all()
    assert all((root / path).is_file() for path in table["path"])


def test_test_files_hide_the_class_and_keep_the_truth(competition, root):
    test = competition.test_table(root)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    truth = pd.read_csv(root / "test_labels.csv", dtype=str)
    assert test["id"].tolist() == sample["id"].tolist() == truth["id"].tolist()
    assert test["id"].tolist() == [str(i) for i in range(1, 41)]
    assert list(sample.columns) == ["id", "label"] and set(sample["label"]) == {"hotdog"}
    folders = test["path"].str.split("/").str[2]
    assert (folders == truth["label"]).all()
    assert folders.head(10).nunique() == 2  # shuffled: the classes are not in two blocks


def test_test_index_is_written_once(competition, root):
    from compkit_hotdog.layout import write_test_index

    before = (root / "test.csv").read_text()
    (root / "hotdog" / "test" / "hotdog" / "999.png").write_bytes(
        (root / "hotdog" / "test" / "hotdog" / "0.png").read_bytes()
    )
    try:
        write_test_index(root)
        assert (root / "test.csv").read_text() == before  # ids never change under a submission
    finally:
        (root / "hotdog" / "test" / "hotdog" / "999.png").unlink()


def test_download_fetches_the_checked_zip_and_writes_the_test_files(competition, tmp_path, monkeypatch):
    from compkit import kaggle
    from compkit_hotdog import SHA1, URL
    from compkit_hotdog.demo import write_demo

    calls = []

    def url(address, root, sha1=None, sha256=None, filename=None, force=False):
        calls.append((address, sha1))
        write_demo(root, 1)  # what hotdog.zip unpacks to
        return root

    monkeypatch.setattr(kaggle, "url", url)
    competition.download(tmp_path)
    assert calls == [(URL, SHA1)]
    assert len(competition.test_table(tmp_path)) == 40
    assert (tmp_path / "test_labels.csv").is_file() and (tmp_path / "sample_submission.csv").is_file()


def test_missing_folder_says_how_to_get_it(competition, tmp_path):
    with pytest.raises(CompkitError, match="compkit download hotdog"):
        competition.train_table(tmp_path)


def test_eval_transform_resizes_the_short_side_then_takes_the_centre(competition):
    config = competition.defaults.replace(image_size=112)
    image = np.zeros((200, 100, 3), np.uint8)
    image[:, :50] = 255
    out = competition.transforms("valid", config)(image=image)["image"]
    assert out.shape == (112, 112, 3)  # short side to 128, then the centre 112
    train = competition.transforms("train", config)(image=image)["image"]
    assert train.shape == (112, 112, 3)


def test_submission_and_its_score_against_the_truth(competition, root, tmp_path):
    from compkit_hotdog import register_commands, score_submission

    table = competition.test_table(root)
    truth = pd.read_csv(root / "test_labels.csv", dtype=str)["label"]
    predictions = np.eye(2, dtype=np.float32)[(truth == "not-hotdog").astype(int).to_numpy()]
    predictions[:4] = predictions[:4, ::-1]  # four wrong
    frame = competition.submission(table, predictions)
    submission.validate(frame, competition.read_sample(root), competition.labels())
    frame.to_csv(tmp_path / "submission.csv", index=False)
    assert score_submission(root, tmp_path / "submission.csv") == pytest.approx(36 / 40)
    group = click.Group()
    register_commands(group)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / NAME).symlink_to(root)
    result = CliRunner().invoke(
        group, ["hotdog-score", str(tmp_path / "submission.csv"), "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 0 and "test accuracy: 0.9000" in result.output
    frame.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(CompkitError, match="no row for 1 test ids"):
        score_submission(root, tmp_path / "short.csv")


def test_defaults_are_the_seeds_steps_with_a_mean_loss(competition):
    config = competition.defaults
    # d2l sums the batch's losses: lr 5e-5 and wd 1e-3 on a sum are lr * 128 and wd / 128 on a mean
    assert config.lr == pytest.approx(5e-5 * config.batch_size)
    assert config.lr * config.weight_decay == pytest.approx(5e-5 * 1e-3)
    assert (config.optimizer, config.momentum, config.head_lr_multiplier, config.epochs) == (
        "sgd",
        0.0,
        10.0,
        5,
    )


def test_pretrained_weights_offline_stop_training_with_the_weights_hint(competition, tmp_path):
    # HF_HUB_OFFLINE is what a machine without internet should set: without it huggingface_hub retries
    # each weights file for about 25 s before giving up.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("COMPKIT_WEIGHTS_DIR", None)
    competition.make_demo(tmp_path / "data" / NAME, 0)
    command = [
        sys.executable,
        "-m",
        "compkit",
        "train",
        NAME,
        "--fold",
        "0",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--data-dir",
        str(tmp_path / "data"),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert competition.defaults.pretrained
    assert result.returncode == 1
    assert "COMPKIT_WEIGHTS_DIR" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_run_beats_the_baseline_and_submits(tmp_path):
    result = end_to_end(
        NAME,
        tmp_path,
        "epochs=6",
        "image_size=48",
        "model=timm/resnet10t",
        "pretrained=false",
        "batch_size=16",
        "lr=3e-3",
        "optimizer=adamw",
        "scheduler=cosine",
        "head_lr_multiplier=1",
        "tta=none",
    )
    competition = registry.get().competition(NAME)
    sample = competition.read_sample(tmp_path / "data" / NAME)
    submission.validate(pd.read_csv(result.submission, dtype=str), sample, competition.labels())
    assert result.best_score > result.baseline
