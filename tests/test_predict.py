"""compkit predict: a folder of images predicted with a run's folds, as submit predicts its test set."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from compkit import predict_folder, registry, tasks
from compkit.config import Config
from compkit.pipeline import _predict
from tests._cli import FAST, invoke, places_env

IMAGES = 40



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Run "r" with folds 0 and 1 of the digits demo, a submission of it, and the first IMAGES test images as
    PNG files (0001.png, ...: ImageId) with their true labels."""
    base = tmp_path_factory.mktemp("predict")
    env = places_env(base)
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    result = invoke("train", "digits", "--folds", "0,1", "--run-name", "r", *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert invoke("submit", "digits", "--run", "r", "--device", "cpu", env=env).exit_code == 0
    root = base / "d" / "digits"
    test = pd.read_csv(root / "test.csv").head(IMAGES)
    folder = base / "images"
    folder.mkdir()
    for image_id, pixels in enumerate(test.to_numpy("uint8"), 1):
        assert cv2.imwrite(str(folder / f"{image_id:04d}.png"), pixels.reshape(28, 28))
    truth = pd.read_csv(root / "test_labels.csv").head(IMAGES)
    pd.DataFrame({"image": [f"{i:04d}.png" for i in truth["ImageId"]], "label": truth["Label"]}).to_csv(
        base / "labels.csv", index=False
    )
    return base, env


@pytest.mark.slow
def test_a_folder_is_predicted_as_submit_predicts_those_images(trained):
    base, env = trained
    out = base / "out" / "predictions.csv"
    result = invoke(
        "predict",
        "digits",
        "--run",
        "r",
        "--images",
        str(base / "images"),
        "--out",
        str(out),
        "--device",
        "cpu",
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "with fold 0, fold 1" in result.output or result.output.count("predicted 40") == 2
    frame = pd.read_csv(out, dtype={"label": str})
    classes = [str(digit) for digit in range(10)]
    assert list(frame.columns) == ["image", *classes, "label"]
    assert frame["image"].tolist() == [f"{i:04d}.png" for i in range(1, IMAGES + 1)]
    np.testing.assert_allclose(frame[classes].sum(axis=1), 1.0, atol=1e-5)
    assert (frame["label"] == frame[classes].idxmax(axis=1)).all()

    (submitted,) = (base / "s" / "digits").glob("*.csv")
    labels = pd.read_csv(submitted)["Label"].astype(str).head(IMAGES)
    assert (frame["label"] == labels).all()
    comp = registry.get().competition("digits")
    run_dir = base / "r" / "digits" / "r"
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    test_table = comp.test_table(base / "d" / "digits").head(IMAGES)
    direct = _predict.predict(
        comp, config, base / "d" / "digits", run_dir, ["fold0", "fold1"], test_table, "none", "cpu", None
    )
    np.testing.assert_allclose(frame[classes].to_numpy(), direct, atol=1e-6)


@pytest.mark.slow
def test_labels_give_accuracy_and_a_confusion_matrix_of_every_labelled_image(trained, tmp_path, monkeypatch):
    base, env = trained
    monkeypatch.chdir(tmp_path)  # the default output: predictions/digits/r-<stamp>.csv
    labels = pd.read_csv(base / "labels.csv").head(30)  # 30 of the 40 images are labelled
    labels.to_csv(tmp_path / "labels.csv", index=False)
    result = invoke(
        "predict",
        "digits",
        "--run",
        "r",
        "--images",
        str(base / "images"),
        "--labels",
        str(tmp_path / "labels.csv"),
        "--folds",
        "0",
        "--tta",
        "hflip",
        env=env,
    )
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "predictions" / "digits").glob("r-*.csv")
    assert f"wrote {written.relative_to(tmp_path)}" in result.output
    frame = pd.read_csv(written, dtype={"image": str, "label": str})
    expected = (
        frame.set_index("image").loc[labels["image"], "label"].to_numpy() == labels["label"].astype(str)
    ).mean()
    assert f"accuracy {expected:.5f} on 30 labelled of 40 images" in result.output
    lines = result.output.splitlines()
    start = lines.index("confusion matrix (rows: true label, columns: predicted label):")
    assert lines[start + 1].split() == [str(digit) for digit in range(10)]
    rows = [line.split() for line in lines[start + 2 : start + 12]]
    assert [row[0] for row in rows] == [str(digit) for digit in range(10)]
    counts = np.array([[int(cell) for cell in row[1:]] for row in rows])
    assert counts.sum() == 30 and counts.trace() == round(expected * 30)


@pytest.mark.slow
def test_an_empty_folder_and_unknown_images_or_labels_are_named(trained, tmp_path):
    base, env = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    result = invoke("predict", "digits", "--run", "r", "--images", str(empty), env=env)
    assert (
        result.exit_code == 1 and "no image files (.png" in result.output and "notes.txt" not in result.output
    )
    assert ".txt" in result.output
    for rows, message in (
        ([("0001.png", "7"), ("nope.png", "3")], "line 3: image 'nope.png' is not in the --images"),
        ([("0001.png", "seven")], "line 2: label 'seven' is not a class of digits"),
        ([("0001.png", "1"), ("0001.png", "1")], "line 3: image '0001.png' is labelled twice"),
    ):
        bad = tmp_path / "bad.csv"
        pd.DataFrame(rows, columns=["image", "label"]).to_csv(bad, index=False)
        result = invoke(
            "predict", "digits", "--run", "r", "--images", str(base / "images"), "--labels", str(bad), env=env
        )
        assert result.exit_code == 1 and f"--labels {bad}, {message}" in result.output, result.output
    (tmp_path / "columns.csv").write_text("file,class\n0001.png,1\n")
    result = invoke(
        "predict",
        "digits",
        "--run",
        "r",
        "--images",
        str(base / "images"),
        "--labels",
        str(tmp_path / "columns.csv"),
        env=env,
    )
    assert result.exit_code == 1 and "no column(s) image, label; expected image,label" in result.output


# -- the folder dataset and the masks, without a run --------------------------------------------------------


def test_the_folder_dataset_resizes_only_for_transforms_that_do_not_size_images(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((80, 100), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((300, 200, 3), 90, np.uint8))
    table = predict_folder.image_table(tmp_path)
    assert table["image"].tolist() == ["a.png", "b.jpg"]
    reg = registry.get()
    siim = reg.competition("siim")  # images come resized from a cache; its transforms only normalise
    dataset = predict_folder.folder_dataset(siim, siim.defaults.replace(image_size=64), table)
    assert dataset.resize_to == 64 and tuple(dataset[0]["image"].shape) == (1, 64, 64)
    hotdog = reg.competition("hotdog")  # resizes the short side and crops the centre itself
    dataset = predict_folder.folder_dataset(hotdog, hotdog.defaults.replace(image_size=96), table)
    assert dataset.resize_to is None and tuple(dataset[1]["image"].shape) == (3, 96, 96)


def test_masks_are_written_at_each_image_size_by_stem(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 40), np.uint8))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.zeros((20, 20, 3), np.uint8))
    table = predict_folder.image_table(tmp_path)
    probabilities = np.zeros((2, 16, 16), np.float32)
    probabilities[:, :, 8:] = 0.9  # the right half
    out = tmp_path / "masks"
    assert predict_folder.write_masks(out, "siim", "r", table, probabilities, tasks.get("segmentation")) == out
    assert sorted(path.name for path in out.iterdir()) == ["a.png", "b.png"]
    mask = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (30, 40) and set(np.unique(mask)) == {0, 255}
    assert mask[:, :18].max() == 0 and mask[:, 22:].min() == 255
    assert cv2.imread(str(out / "b.png"), cv2.IMREAD_UNCHANGED).shape == (20, 20)
    table.loc[1, "image"] = "a.jpg"
    with pytest.raises(
        predict_folder.CompkitError, match=re.escape("a.png and a.jpg would write the same mask")
    ):
        predict_folder._check_stems(table, tmp_path)
