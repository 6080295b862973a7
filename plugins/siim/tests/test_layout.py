"""The raw layout: tables read from the DICOM folders, the mask file and the sample submission."""

import numpy as np
import pandas as pd
import pytest

from compkit.errors import CompkitError
from compkit_siim import layout
from compkit_siim.demo import write_mask_file
from compkit_siim.dicom import write_dicom


def add_image(root, folder, image_id, shape=(20, 24)):
    path = root / folder / f"study-{image_id}" / f"series-{image_id}" / f"{image_id}.dcm"
    write_dicom(path, np.zeros(shape, dtype=np.uint8), f"1.2.{len(image_id)}", "1.2", "1.3", compress=False)
    return path


@pytest.fixture
def root(tmp_path):
    for image_id in ("b", "a", "unlabelled"):
        add_image(tmp_path, layout.TRAIN_IMAGES, image_id)
    for image_id, shape in (("t2", (30, 20)), ("t1", (20, 24))):
        add_image(tmp_path, layout.TEST_IMAGES, image_id, shape)
    write_mask_file(tmp_path / layout.LABELS, [("b", "5 3"), ("no-file", "-1"), ("a", "-1"), ("b", "2 2")])
    return tmp_path


def test_train_table_keeps_labelled_images_with_files_in_the_mask_files_order(root):
    table = layout.train_table(root)
    assert table["ImageId"].tolist() == ["b", "a"]
    assert table["has_mask"].tolist() == [1, 0]
    assert table["path"][0] == "siim/dicom-images-train/study-b/series-b/b.dcm"
    assert (root / table["path"][1]).is_file()


def test_derived_sample_lists_every_test_image_sorted_and_empty(root):
    layout.write_sample(root)
    sample = pd.read_csv(root / layout.SAMPLE, dtype=str)
    assert list(sample.columns) == ["ImageId", "EncodedPixels"]
    assert sample["ImageId"].tolist() == ["t1", "t2"] and set(sample["EncodedPixels"]) == {"-1"}


def test_test_table_follows_an_existing_sample_and_carries_each_images_size(root):
    (root / layout.SAMPLE).write_text("ImageId,EncodedPixels\nt2,-1\nt1,-1\n")
    layout.write_sample(root)  # an existing sample (e.g. the competition's own) is kept
    table = layout.test_table(root)
    assert table["ImageId"].tolist() == ["t2", "t1"]
    assert table[["height", "width"]].to_numpy().tolist() == [[30, 20], [20, 24]]


def test_a_sample_naming_images_without_files_is_refused(root):
    (root / layout.SAMPLE).write_text("ImageId,EncodedPixels\nt1,-1\nstage2-image,-1\n")
    with pytest.raises(CompkitError, match="1 image.*stage2-image"):
        layout.test_table(root)


def test_a_download_that_left_another_layout_says_what_it_found(tmp_path):
    (tmp_path / "train_png").mkdir()
    with pytest.raises(CompkitError, match="siim/train-rle.csv.*found: train_png"):
        layout.check_layout(tmp_path)
