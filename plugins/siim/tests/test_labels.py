"""The organisers' mask file: header quirks, -1 rows, several regions per image merged into one mask."""

import numpy as np
import pytest

from compkit import rle
from compkit.errors import CompkitError
from compkit_siim.labels import merge_regions, read_labels, regions_by_image

SHAPE = (12, 10)


def region(rows, columns):
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[rows, columns] = 1
    return mask


def write(path, header, rows, separator):
    lines = [header] + [f"{image_id}{separator}{value}" for image_id, value in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("header", "separator"),
    [
        ("ImageId, EncodedPixels", ", "),  # train-rle.csv
        ("ImageId,EncodedPixels", ","),  # stage_2_train.csv
    ],
)
def test_several_rows_merge_into_one_mask_and_minus_one_is_empty(tmp_path, header, separator):
    upper = region(slice(0, 3), slice(0, 4))
    lower = region(slice(8, 12), slice(6, 10))  # ends on the last pixel
    rows = [
        ("a", rle.encode(upper, relative=True)),
        ("b", "-1"),
        ("a", rle.encode(lower, relative=True)),
        ("c", "-1"),
    ]
    labels = read_labels(write(tmp_path / "labels.csv", header, rows, separator))
    assert list(labels.columns) == ["ImageId", "EncodedPixels"]
    assert labels["EncodedPixels"][1] == "-1"  # the leading space is gone
    regions = regions_by_image(labels)
    assert list(regions) == ["a", "b", "c"] and regions["b"] == [] and len(regions["a"]) == 2
    merged = merge_regions(regions["a"], SHAPE)
    assert merged.dtype == np.uint8 and np.array_equal(merged, upper | lower)
    assert not merge_regions(regions["b"], SHAPE).any()


def test_overlapping_regions_stay_zero_one():
    first, second = region(slice(0, 6), slice(0, 6)), region(slice(3, 9), slice(3, 9))
    merged = merge_regions([rle.encode(first, relative=True), rle.encode(second, relative=True)], SHAPE)
    assert set(np.unique(merged)) == {0, 1} and merged.sum() == (first | second).sum()


def test_organisers_example_decodes_to_the_documented_runs():
    # From the facts: runs at column-major offsets 10 (2 long), 13 (1) and 24 (2) encode as "10 2 1 1 10 2".
    mask = merge_regions([" 10 2 1 1 10 2"], (8, 4))
    assert np.flatnonzero(mask.ravel(order="F")).tolist() == [10, 11, 13, 24, 25]


def test_a_file_with_another_header_is_refused_by_name(tmp_path):
    path = write(tmp_path / "labels.csv", "id,rle", [("a", "-1")], ",")
    with pytest.raises(CompkitError, match="labels.csv.*ImageId, EncodedPixels"):
        read_labels(path)


def test_a_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(CompkitError, match="compkit download siim"):
        read_labels(tmp_path / "train-rle.csv")


def test_an_empty_cell_or_an_image_both_empty_and_with_regions_is_refused_naming_the_lines(tmp_path):
    encoded = rle.encode(region(slice(0, 3), slice(0, 4)), relative=True)
    path = write(tmp_path / "empty.csv", "ImageId,EncodedPixels", [("a", encoded), ("b", ""), ("c", "-1")], ",")
    with pytest.raises(CompkitError, match=r"empty\.csv has 1 row\(s\) with an empty EncodedPixels, on line\(s\) 3 "
                                           r"\(write -1 for an image without pneumothorax\)"):
        read_labels(path)
    path = write(tmp_path / "noid.csv", "ImageId,EncodedPixels", [("a", encoded), ("", "-1")], ",")
    with pytest.raises(CompkitError, match=r"noid\.csv has 1 row\(s\) with an empty ImageId, on line\(s\) 3$"):
        read_labels(path)
    rows = [("a", encoded), ("b", "-1"), ("a", "-1")]
    path = write(tmp_path / "mixed.csv", "ImageId, EncodedPixels", rows, ", ")
    with pytest.raises(CompkitError, match=r"mixed\.csv: image a has both a -1 row \(no pneumothorax\) and region "
                                           r"rows, on lines 2, 4 \(1 image\(s\) like it\)"):
        read_labels(path)


def test_a_truncated_dicom_says_it_is_damaged_not_that_pillow_is_missing(tmp_path):
    from compkit_siim import dicom

    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    for compress in (False, True):
        whole = tmp_path / f"whole-{compress}.dcm"
        dicom.write_dicom(whole, image, "1.2.3", "1.2", "1.2.4", compress=compress)
        data = whole.read_bytes()
        cut = tmp_path / f"cut-{compress}.dcm"
        cut.write_bytes(data[: len(data) - len(data) // 3])
        with pytest.raises(CompkitError, match=r"cut-.*\.dcm .*damaged or truncated.*--force") as raised:
            dicom.read_dicom(cut)
        assert "Pillow" not in str(raised.value)
