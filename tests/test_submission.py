"""Tests for compkit.submission: the frame builders, validation naming rows, atomic writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from compkit import _io, rle, submission
from compkit.errors import CompkitError

CLASSES = ["cat", "dog", "frog"]


def cifar_sample(count: int = 8) -> pd.DataFrame:
    return pd.DataFrame({"id": list(range(1, count + 1)), "label": ["cat"] * count})


def cifar_frame(count: int = 8) -> pd.DataFrame:
    probabilities = np.eye(3)[np.arange(count) % 3] * 0.8 + 0.05
    return submission.labels_frame(list(range(1, count + 1)), probabilities, CLASSES)


def test_labels_frame_takes_the_argmax_class_name():
    frame = submission.labels_frame([5, 6], np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]]), CLASSES)
    assert list(frame.columns) == ["id", "label"]
    assert frame.to_dict("list") == {"id": [5, 6], "label": ["dog", "cat"]}


def test_labels_frame_rejects_class_count_mismatch():
    with pytest.raises(CompkitError, match="3 probability columns but 2 class names"):
        submission.labels_frame([1], np.ones((1, 3)), ["a", "b"])
    with pytest.raises(CompkitError, match="2 ids"):
        submission.labels_frame([1, 2], np.ones((3, 3)), CLASSES)


def test_probabilities_frame_puts_ids_first():
    columns = ["image_id", "healthy", "multiple_diseases", "rust", "scab"]
    probabilities = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    frame = submission.probabilities_frame(["Test_0", "Test_1"], probabilities, columns)
    assert list(frame.columns) == columns
    assert frame["image_id"].tolist() == ["Test_0", "Test_1"]
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), probabilities)
    with pytest.raises(CompkitError, match="give 5"):
        submission.probabilities_frame(["a", "b"], probabilities, columns[1:])


@pytest.mark.parametrize("relative", [False, True])
def test_rle_frame_encodes_each_mask_and_marks_empty_ones(relative):
    masks = np.zeros((3, 4, 5), dtype=np.uint8)
    masks[0, 1:3, 2] = 1
    masks[2] = 1
    frame = submission.rle_frame(["a", "b", "c"], masks, relative=relative)
    assert list(frame.columns) == ["ImageId", "EncodedPixels"]
    assert frame["EncodedPixels"][1] == "-1"
    for mask, value in zip(masks, frame["EncodedPixels"], strict=True):
        np.testing.assert_array_equal(rle.decode(value, (4, 5), relative=relative), mask)
    assert submission.rle_frame(["b"], masks[1:2], empty="")["EncodedPixels"][0] == ""


def test_valid_frame_passes_with_int_and_string_ids():
    submission.validate(cifar_frame(), cifar_sample(), labels=CLASSES)
    as_text = cifar_sample().astype(str)
    submission.validate(cifar_frame(), as_text, labels=CLASSES)


def test_wrong_columns_are_named():
    with pytest.raises(
        CompkitError, match=r"\['id', 'label'\] differ from the sample's \['ImageId', ' EncodedPixels'\]"
    ):
        submission.validate(cifar_frame(2), pd.DataFrame({"ImageId": [1, 2], " EncodedPixels": ["-1", "-1"]}))
    swapped = cifar_frame()[["label", "id"]]
    with pytest.raises(CompkitError, match="order"):
        submission.validate(swapped, cifar_sample())


def test_unknown_and_missing_ids_are_named():
    frame = cifar_frame()
    frame.loc[6, "id"] = 99
    with pytest.raises(CompkitError) as caught:
        submission.validate(frame, cifar_sample())
    message = str(caught.value)
    assert "row 6 (id 99)" in message and "sample ids missing: '7'" in message


def test_too_few_rows_are_reported_with_the_missing_ids():
    with pytest.raises(CompkitError) as caught:
        submission.validate(cifar_frame(5), cifar_sample(8))
    message = str(caught.value)
    assert "5 rows where the sample has 8" in message and "'6', '7', '8'" in message


def test_repeated_ids_are_named():
    frame = cifar_frame()
    frame.loc[3, "id"] = 3
    with pytest.raises(CompkitError, match=r"repeated ids at row 3 \(id 3\)"):
        submission.validate(frame, cifar_sample())


def test_shuffled_ids_name_rows_and_cap_the_list():
    count = 20
    frame = cifar_frame(count).iloc[::-1].reset_index(drop=True)
    with pytest.raises(CompkitError, match="out of the sample's order") as caught:
        submission.validate(frame, cifar_sample(count))
    message = str(caught.value)
    assert (
        "rows 0 (id 20), 1 (id 19), 2 (id 18), 3 (id 17), 4 (id 16) and 15 more (20 rows in all)" in message
    )


def test_missing_and_blank_values_are_named():
    frame = cifar_frame()
    frame.loc[2, "label"] = None
    frame.loc[5, "label"] = " "
    with pytest.raises(CompkitError, match=r"column\(s\) \['label'\] at rows 2 \(id 3\), 5 \(id 6\)"):
        submission.validate(frame, cifar_sample())


def test_values_outside_the_labels_are_named():
    frame = cifar_frame()
    frame.loc[4, "label"] = "horse"
    with pytest.raises(CompkitError, match=r"row 4 \(id 5\): 'horse'; allowed: 'cat', 'dog', 'frog'"):
        submission.validate(frame, cifar_sample(), labels=CLASSES)
    submission.validate(frame, cifar_sample())


def test_write_then_read_back_validates(tmp_path):
    path = tmp_path / "out" / "submission.csv"
    submission.write(cifar_frame(), path, sample=cifar_sample(), labels=CLASSES)
    back = pd.read_csv(path)
    assert back.to_dict("list") == cifar_frame().to_dict("list")
    submission.validate(back, cifar_sample(), labels=CLASSES)
    submission.validate(back, submission.read_sample(path), labels=CLASSES)


def test_rle_round_trip_through_csv_against_a_siim_sample(tmp_path):
    ids = ["1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819", "1.2.276.0.7230010.3.1.4.8323329.2"]
    sample_path = tmp_path / "sample.csv"
    sample_path.write_text("ImageId,EncodedPixels\n" + "".join(f"{image},-1\n" for image in ids))
    masks = np.zeros((2, 6, 6), dtype=np.uint8)
    masks[1, 2:4, 1:3] = 1
    path = tmp_path / "submission.csv"
    submission.write(submission.rle_frame(ids, masks, relative=True), path, sample=sample_path)
    back = pd.read_csv(path)
    submission.validate(back, submission.read_sample(sample_path))
    np.testing.assert_array_equal(rle.decode(back["EncodedPixels"][1], (6, 6), relative=True), masks[1])


def test_a_failed_validation_leaves_nothing_behind(tmp_path):
    path = tmp_path / "submission.csv"
    with pytest.raises(CompkitError):
        submission.write(cifar_frame(5), path, sample=cifar_sample(8))
    assert list(tmp_path.iterdir()) == []
    path.write_text("previous\n")
    with pytest.raises(CompkitError):
        submission.write(cifar_frame(5), path, sample=cifar_sample(8))
    assert path.read_text() == "previous\n"


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def half_written(self, handle, **kwargs):
        handle.write("id,label\n1,ca")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_written)
    with pytest.raises(OSError, match="disk full"):
        submission.write(cifar_frame(), tmp_path / "submission.csv", sample=cifar_sample())
    assert list(tmp_path.iterdir()) == []


def test_files_claimed_in_the_same_second_get_distinct_names_and_a_failure_leaves_none(tmp_path):
    with _io.new_file(tmp_path, "20261201-120000", ".csv") as first, \
            _io.new_file(tmp_path, "20261201-120000", ".csv") as second:
        submission.write(pd.DataFrame({"id": ["a"], "label": ["x"]}), first)
        submission.write(pd.DataFrame({"id": ["b"], "label": ["y"]}), second)
    assert (first.name, second.name) == ("20261201-120000.csv", "20261201-120000-2.csv")
    assert pd.read_csv(first)["id"].tolist() == ["a"] and pd.read_csv(second)["id"].tolist() == ["b"]
    sample = pd.DataFrame({"id": ["a"], "label": ["x"]})
    with pytest.raises(CompkitError), _io.new_file(tmp_path, "20261201-120000", ".csv") as third:
        submission.write(pd.DataFrame({"id": ["zzz"], "label": ["x"]}), third, sample)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20261201-120000-2.csv", "20261201-120000.csv"]


def test_an_empty_string_is_a_value_only_in_the_blank_columns():
    sample = pd.DataFrame({"image_id": ["a", "b"], "PredictionString": ["1.0 0 0 50 50", "1.0 0 0 50 50"]})
    frame = pd.DataFrame({"image_id": ["a", "b"], "PredictionString": ["0.9000 1 2 3 4", ""]})  # b: no box
    submission.validate(frame, sample, blank=("PredictionString",))
    with pytest.raises(CompkitError, match="row 1"):
        submission.validate(frame, sample)
    frame.loc[1, "PredictionString"] = None  # missing is still missing
    with pytest.raises(CompkitError, match="missing or blank"):
        submission.validate(frame, sample, blank=("PredictionString",))
