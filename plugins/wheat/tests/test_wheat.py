"""The wheat plugin: the shared contract, train.csv's bbox strings and its errors, images without boxes, folds
grouped on the source, the demo, the test table, the submission against the sample, and a demo run end to end."""

from __future__ import annotations

import filecmp

import numpy as np
import pandas as pd
import pytest
import tomllib
from PIL import Image

from compkit import boxes, folds, registry
from compkit.errors import CompkitError
from compkit.testing import CompetitionContract, demo_fixtures, end_to_end

NAME = "wheat"


class TestWheat(CompetitionContract):
    name = NAME
    module = "compkit_wheat"


competition, root = demo_fixtures(NAME)


def _field(folder, ids, size=(40, 30)):
    """Write plain JPEGs ``folder/<id>.jpg`` of ``size`` (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        Image.new("RGB", size, (90, 120, 60)).save(folder / f"{image_id}.jpg")


def _train(tmp_path, bboxes, ids=None, files=None, width=40, height=30):
    """A train.csv of one row per bbox string (image ``ids``, default all "a") and its JPEGs (``files``)."""
    ids = ids or ["a"] * len(bboxes)
    pd.DataFrame({"image_id": ids, "width": width, "height": height, "bbox": bboxes, "source": "ethz_1"}).to_csv(
        tmp_path / "train.csv", index=False)
    _field(tmp_path / "train", sorted(set(ids)) if files is None else files, (width, height))
    return tmp_path


# -- train.csv -------------------------------------------------------------------------------------------


def test_bbox_strings_become_xyxy_pixel_rows_with_label_zero(competition, tmp_path):
    rng = np.random.default_rng(3)
    xywh = np.column_stack([rng.uniform(0, 20, 9), rng.uniform(0, 15, 9), rng.uniform(1, 20, 9), rng.uniform(1, 15, 9)])
    ids = list("aaabbbbcc")
    strings = [f"[{x!r}, {y!r}, {w!r}, {h!r}]" for x, y, w, h in xywh.tolist()]
    strings[4] = "[ {}, {},{} ,{} ]".format(*xywh[4].tolist())  # spacing varies: still four numbers
    table = competition.train_table(_train(tmp_path, strings, ids))
    assert table["image_id"].tolist() == ["a", "b", "c"]
    for image_id, target in zip(table["image_id"], table["target"]):
        expected = xywh[[i for i, name in enumerate(ids) if name == image_id]]
        assert target.dtype == np.float32 and target.shape == (len(expected), 5)
        assert (target[:, 0] == 0).all()
        np.testing.assert_allclose(target[:, 1:3], expected[:, :2], rtol=1e-6)
        np.testing.assert_allclose(target[:, 3:], expected[:, :2] + expected[:, 2:], rtol=1e-6)
    assert table["path"].tolist() == ["train/a.jpg", "train/b.jpg", "train/c.jpg"]
    assert (table["width"] == 40).all() and (table["height"] == 30).all() and (table["source"] == "ethz_1").all()


@pytest.mark.parametrize(("bad", "message"), [
    ("[1.0, 2.0, 3.0]", "is not \\[x, y, w, h\\]"),
    ("[1.0, two, 3.0, 4.0]", "is not \\[x, y, w, h\\]"),
    ("1.0, 2.0, 3.0, 4.0", "is not \\[x, y, w, h\\]"),
    ("[1.0, 2.0, 3.0, 4.0, 5.0]", "is not \\[x, y, w, h\\]"),
    ("[1.0, 2.0, nan, 4.0]", "is not \\[x, y, w, h\\]"),
    ("", "is not \\[x, y, w, h\\]"),
    ("[1.0, 2.0, -3.0, 4.0]", "has a width or height that is not above 0"),
    ("[1.0, 2.0, 3.0, 0.0]", "has a width or height that is not above 0"),
    ("[30.0, 2.0, 11.0, 4.0]", "reaches outside its image"),
    ("[-0.5, 2.0, 3.0, 4.0]", "reaches outside its image"),
])
def test_a_bad_bbox_is_an_error_naming_the_file_row_and_value(competition, tmp_path, bad, message):
    good = ["[0.0, 0.0, 40.0, 30.0]", "[1.0, 1.0, 5.0, 5.0]"]
    _train(tmp_path, [good[0], good[1], bad, good[1]], ids=["a", "a", "b", "b"])
    shown = bad.replace("[", "\\[").replace("]", "\\]")
    with pytest.raises(CompkitError, match=rf"train\.csv, row 3 \(line 4\): image_id 'b': bbox '{shown}' {message}"):
        competition.train_table(tmp_path)


def test_an_image_id_without_its_file_is_an_error_naming_the_row(competition, tmp_path):
    _train(tmp_path, ["[1, 1, 5, 5]", "[2, 2, 5, 5]", "[3, 3, 5, 5]"], ids=["a", "b", "b"], files=["a"])
    with pytest.raises(CompkitError, match=r"train\.csv, row 2 \(line 3\): image_id 'b' has no file train/b\.jpg"):
        competition.train_table(tmp_path)


def test_rows_of_one_image_must_agree_on_its_size(competition, tmp_path):
    _train(tmp_path, ["[1, 1, 5, 5]", "[2, 2, 5, 5]"])
    table = pd.read_csv(tmp_path / "train.csv")
    table.loc[1, "width"] = 50
    table.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(CompkitError, match=r"row 2 \(line 3\): image_id 'a' has width '50', an earlier row of it '40'"):
        competition.train_table(tmp_path)


def test_missing_files_say_how_to_get_them(competition, tmp_path):
    with pytest.raises(CompkitError, match="train.csv is missing; run: compkit download wheat"):
        competition.train_table(tmp_path)
    with pytest.raises(CompkitError, match="sample_submission.csv is missing; run: compkit download wheat"):
        competition.test_table(tmp_path)


def test_images_without_boxes_are_rows_with_no_target_and_their_own_size(competition, tmp_path):
    _train(tmp_path, ["[1, 1, 5, 5]"], ids=["a"])
    _field(tmp_path / "train", ["z"], (64, 48))  # a file train.csv does not name
    table = competition.train_table(tmp_path).set_index("image_id")
    assert table.loc["z", "target"].shape == (0, 5) and table.loc["z", "target"].dtype == np.float32
    assert (table.loc["z", "width"], table.loc["z", "height"]) == (64, 48)
    assert table.loc["z", "source"] == "unknown" and table.loc["a", "target"].shape == (1, 5)


def test_a_train_csv_with_no_box_at_all_gives_empty_targets(competition, tmp_path):
    _train(tmp_path, [], files=["p", "q"])
    table = competition.train_table(tmp_path)
    assert [target.shape for target in table["target"]] == [(0, 5), (0, 5)]
    assert (table["source"] == "unknown").all()


# -- the demo ---------------------------------------------------------------------------------------------


def test_demo_is_in_kaggles_layout(competition, root):
    raw = pd.read_csv(root / "train.csv", dtype={"image_id": str})
    assert list(raw.columns) == ["image_id", "width", "height", "bbox", "source"]
    assert raw["bbox"].str.fullmatch(r"\[\d+\.\d, \d+\.\d, \d+\.\d, \d+\.\d\]").all()
    assert raw["source"].nunique() == 4 and (raw["width"] == 160).all() and (raw["height"] == 160).all()
    files = sorted(path.stem for path in (root / "train").glob("*.jpg"))
    assert len(files) == 48
    without = set(files) - set(raw["image_id"])
    assert 0 < len(without) < 8  # a few images without heads, only files
    counts = raw["image_id"].value_counts()
    assert counts.max() <= 8
    table = competition.train_table(root)
    assert sorted(table["image_id"]) == files
    rows = np.concatenate(table["target"].tolist())
    sides = rows[:, 3:] - rows[:, 1:3]
    assert sides.max() <= 31 and np.median(sides) >= 10
    touching = (rows[:, 1:3] == 0).any(axis=1) | (rows[:, 3:] == 160).any(axis=1)
    assert 0 < touching.sum() < len(rows)  # some heads are cut by the border
    sample = pd.read_csv(root / "sample_submission.csv", dtype={"image_id": str})
    assert list(sample.columns) == ["image_id", "PredictionString"] and len(sample) == 8
    assert all((root / "test" / f"{image_id}.jpg").is_file() for image_id in sample["image_id"])


def test_demo_heads_are_brighter_and_yellower_than_the_field(competition, root):
    table = competition.train_table(root)
    row = table[table["target"].map(len) > 2].iloc[0]
    image = np.asarray(Image.open(root / row["path"]), np.float32)
    inside = np.zeros(image.shape[:2], bool)
    for _, x1, y1, x2, y2 in row["target"].astype(int):
        inside[y1 + (y2 - y1) // 3: y2 - (y2 - y1) // 3, x1 + (x2 - x1) // 3: x2 - (x2 - x1) // 3] = True
    head, field = image[inside].mean(axis=0), image[~inside].mean(axis=0)
    assert head[0] > field[0] + 60 and head[1] > field[1] + 40  # red and green up: yellow


def test_demo_is_the_same_for_a_seed_and_differs_across_seeds(competition, tmp_path):
    for name, seed in (("one", 0), ("two", 0), ("three", 1)):
        competition.make_demo(tmp_path / name, seed)
    listed = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*") if path.is_file())
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "one", tmp_path / "two", listed, shallow=False)
    assert not mismatch and not errors and len(match) == 48 + 8 + 2
    assert (tmp_path / "one" / "train.csv").read_text() != (tmp_path / "three" / "train.csv").read_text()


def test_folds_grouped_on_the_source_never_split_a_source(competition, root):
    table = competition.train_table(root)
    split = folds.split(table, id_column="image_id", n_folds=3, seed=0, stratify=competition.stratify,
                        group=competition.group)
    fold_of = table.assign(fold=split["fold"].to_numpy())
    assert (fold_of.groupby("source")["fold"].nunique() == 1).all()
    assert fold_of["fold"].nunique() == 3


# -- test table and submission ------------------------------------------------------------------------------


def test_test_table_follows_the_sample_with_sizes_from_the_files(competition, root, tmp_path):
    sample = pd.read_csv(root / "sample_submission.csv", dtype={"image_id": str})
    table = competition.test_table(root)
    assert table["image_id"].tolist() == sample["image_id"].tolist()
    assert table["path"].tolist() == [f"test/{image_id}.jpg" for image_id in sample["image_id"]]
    assert (table["width"] == 160).all() and (table["height"] == 160).all()
    pd.DataFrame({"image_id": ["w", "t"], "PredictionString": ""}).to_csv(tmp_path / "sample_submission.csv")
    _field(tmp_path / "test", ["w", "t"], (70, 20))
    other = competition.test_table(tmp_path)
    assert other["image_id"].tolist() == ["w", "t"] and (other["width"] == 70).all() and (other["height"] == 20).all()
    (tmp_path / "test" / "t.jpg").unlink()
    with pytest.raises(CompkitError, match=r"sample_submission\.csv, row 2 \(line 3\): image_id 't' has no file"):
        competition.test_table(tmp_path)


def test_submission_has_the_samples_rows_and_columns(competition, root):
    table = competition.test_table(root)
    predictions = competition.kind.random_predictions(len(table), competition, np.random.default_rng(4))
    frame = competition.submission(table, predictions)
    sample = competition.read_sample(root)
    # ids and columns as the sample's; an image without a box has an empty PredictionString, as Kaggle takes it
    assert list(frame.columns) == list(sample.columns) == ["image_id", "PredictionString"]
    assert frame["image_id"].tolist() == sample["image_id"].tolist()
    assert [len(boxes.parse_prediction_string(text, row)) for row, text in enumerate(frame["PredictionString"])] == [
        len(rows) for rows in predictions]


def test_submission_round_trips_in_each_images_own_pixels(competition):
    """Boxes normalised by the input come back as x y w h pixels of each image, whose sides differ."""
    rng = np.random.default_rng(5)
    table = pd.DataFrame({"image_id": ["p", "q", "r"], "width": [1024, 640, 300], "height": [512, 1024, 300]})
    corners = [np.sort(rng.uniform(0, 1, (count, 2, 2)), axis=1) for count in (3, 0, 5)]
    predictions = boxes.ragged([
        np.column_stack([np.sort(rng.uniform(0.1, 1, len(c)))[::-1], np.zeros(len(c)), c[:, 0, 0], c[:, 0, 1],
                         c[:, 1, 0], c[:, 1, 1]]).astype(np.float32).reshape(-1, 6) for c in corners], 6)
    frame = competition.submission(table, predictions)
    assert frame["image_id"].tolist() == ["p", "q", "r"] and frame["PredictionString"][1] == ""
    for row, (string, rows) in enumerate(zip(frame["PredictionString"], predictions)):
        parsed = boxes.parse_prediction_string(string, row)
        width, height = table.loc[row, ["width", "height"]]
        x1, y1 = rows[:, 2] * width, rows[:, 3] * height
        expected = np.column_stack([rows[:, 0], x1, y1, rows[:, 4] * width - x1, rows[:, 5] * height - y1])
        assert parsed.shape == (len(rows), 5)
        np.testing.assert_allclose(parsed[:, 0], expected[:, 0], atol=1e-4)
        np.testing.assert_allclose(parsed[:, 1:], expected[:, 1:], atol=1.01)  # whole pixels


# -- transforms and dataset ---------------------------------------------------------------------------------


def test_valid_items_carry_the_boxes_resized_with_the_image(competition, root):
    config = competition.defaults.replace(image_size=128, pretrained=False)
    table = competition.train_table(root)
    dataset = competition.dataset(table, root, "valid", config)
    for index in range(len(table)):
        target, rows = dataset[index]["target"], table["target"][index]
        assert dataset[index]["image"].shape == (3, 128, 128)
        np.testing.assert_allclose(target["boxes"].numpy(), rows[:, 1:] * 128 / 160, atol=1e-3)
        assert (target["labels"].numpy() == 0).all()


def test_train_items_keep_every_box_inside_under_flips_and_turns(competition, root):
    config = competition.defaults.replace(image_size=96, pretrained=False, seed=1)
    table = competition.train_table(root)
    dataset = competition.dataset(table, root, "train", config)
    moved = 0
    for index in range(len(table)):
        target = dataset[index]["target"]
        found = target["boxes"].numpy()
        assert len(found) <= len(table["target"][index])  # a resize drops no box; none appears
        assert (found >= 0).all() and (found <= 96).all() and (found[:, 2:] > found[:, :2]).all()
        areas = np.sort((found[:, 2:] - found[:, :2]).prod(axis=1))
        rows = table["target"][index][:, 1:] * 96 / 160
        assert np.allclose(areas, np.sort((rows[:, 2:] - rows[:, :2]).prod(axis=1)), rtol=0.05, atol=1.0)
        moved += not np.allclose(np.sort(found, axis=0), np.sort(rows, axis=0), atol=1e-3)
    assert moved > len(table) // 3  # the flips and turns move the boxes of most images


def test_a_quarter_turn_only_for_a_square_input(competition):
    def names(size):
        config = competition.defaults.replace(image_size=size, pretrained=False)
        return [type(step).__name__ for step in competition.transforms("train", config).transforms]

    assert "RandomRotate90" in names(128) and "RandomRotate90" not in names((128, 96))
    assert names(128)[:4] == ["Resize", "HorizontalFlip", "VerticalFlip", "RandomRotate90"]
    config = competition.defaults.replace(image_size=128, pretrained=False)
    assert [type(step).__name__ for step in competition.transforms("valid", config).transforms] == ["Resize",
                                                                                                   "Normalize"]


def test_download_asks_kaggle_for_the_competitions_files(competition, tmp_path, monkeypatch):
    from compkit import kaggle

    calls = []
    monkeypatch.setattr(kaggle, "competition_files", lambda slug, root, force=False: calls.append((slug, root)))
    competition.download(tmp_path)
    assert calls == [("global-wheat-detection", tmp_path)]


# -- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_run_beats_predicting_no_box_and_submits(tmp_path):
    comp = registry.get().competition(NAME)
    demo = tomllib.loads(comp.recipes()["demo"].read_text())
    settings = [f"{key}={value}".lower() for key, value in demo.items() if key not in ("num_workers", "n_folds")]
    result = end_to_end(NAME, tmp_path, *settings, n_folds=demo["n_folds"])
    sample = comp.read_sample(tmp_path / "data" / NAME)
    written = pd.read_csv(result.submission, dtype={"image_id": str}, keep_default_na=False)
    assert list(written.columns) == list(sample.columns) and written["image_id"].tolist() == sample["image_id"].tolist()
    found = [boxes.parse_prediction_string(text, row) for row, text in enumerate(written["PredictionString"])]
    assert sum(map(len, found)) > 0
    # no box anywhere scores 0 on every image with heads (1 on the few without): the model must find heads
    assert result.best_score > result.baseline + 0.2  # measured: 0.618 against 0.267 (fold 0: 15 images, 4 empty)
