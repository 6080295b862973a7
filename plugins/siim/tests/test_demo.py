"""The demo writes the real raw layout: folder pattern, DICOMs, the header with its space, relative RLE, -1 rows."""

import numpy as np
import pandas as pd
import pydicom
import pytest

from compkit import rle
from compkit_siim import demo, layout
from compkit_siim.labels import merge_regions, read_labels, regions_by_image


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim-demo")
    demo.write_demo(root, seed=0)
    return root


def test_dicoms_sit_in_study_series_folders_named_by_their_uids(root):
    paths = sorted((root / layout.TRAIN_IMAGES).glob("*/*/*.dcm"))
    assert len(paths) == demo.TRAIN_IMAGES
    assert len(list((root / layout.TEST_IMAGES).glob("*/*/*.dcm"))) == demo.TEST_IMAGES
    dataset = pydicom.dcmread(paths[0])
    assert paths[0].stem == dataset.SOPInstanceUID
    assert paths[0].parent.name == dataset.SeriesInstanceUID
    assert paths[0].parent.parent.name == dataset.StudyInstanceUID
    assert (dataset.Rows, dataset.Columns) == (demo.IMAGE_SIZE, demo.IMAGE_SIZE)


def test_mask_file_has_the_organisers_header_and_spaces(root):
    text = (root / layout.LABELS).read_text().splitlines()
    assert text[0] == "ImageId, EncodedPixels"
    raw = pd.read_csv(root / layout.LABELS)
    assert list(raw.columns) == ["ImageId", " EncodedPixels"]
    assert raw[" EncodedPixels"].str.startswith(" ").all()
    assert (raw[" EncodedPixels"] == " -1").any()


def test_some_images_have_several_rows_and_about_half_have_pneumothorax(root):
    labels = read_labels(root / layout.LABELS)
    regions = regions_by_image(labels)
    assert len(regions) == demo.TRAIN_IMAGES
    assert any(len(found) > 1 for found in regions.values())
    assert 0.3 < np.mean([bool(found) for found in regions.values()]) < 0.6


def test_each_row_is_one_region_in_relative_rle(root):
    regions = regions_by_image(read_labels(root / layout.LABELS))
    several = next(found for found in regions.values() if len(found) > 1)
    shape = (demo.IMAGE_SIZE, demo.IMAGE_SIZE)
    parts = [rle.decode(encoded, shape, relative=True) for encoded in several]
    assert all(part.any() for part in parts)
    assert not (parts[0] & parts[1]).any()  # separate regions
    assert merge_regions(several, shape).sum() == sum(part.sum() for part in parts)


def test_sample_submission_lists_the_test_images_with_minus_one(root):
    sample = pd.read_csv(root / layout.SAMPLE, dtype=str)
    assert list(sample.columns) == ["ImageId", "EncodedPixels"]
    assert len(sample) == demo.TEST_IMAGES and set(sample["EncodedPixels"]) == {"-1"}
    truth = regions_by_image(read_labels(root / demo.TEST_TRUTH))
    assert set(truth) == set(sample["ImageId"])


def test_the_same_seed_writes_the_same_files(root, tmp_path):
    demo.write_demo(tmp_path, seed=0)
    assert (tmp_path / layout.LABELS).read_text() == (root / layout.LABELS).read_text()


def test_missing_dicoms_are_counted_and_too_many_refused(tmp_path, capsys):
    import shutil

    from compkit.errors import CompkitError

    demo.write_demo(tmp_path, seed=0)
    paths = sorted((tmp_path / layout.TRAIN_IMAGES).glob("*/*/*.dcm"))
    paths[0].unlink()  # one of the demo's images: under the share, left out with a note
    table = layout.train_table(tmp_path)
    assert len(table) == demo.TRAIN_IMAGES - 1 and paths[0].stem not in set(table["ImageId"])
    note = capsys.readouterr().err
    assert f"1 of {demo.TRAIN_IMAGES} images in" in note and paths[0].stem in note and "left out" in note
    for path in paths[1:len(paths) // 4]:
        shutil.rmtree(path.parent.parent)
    with pytest.raises(CompkitError, match=r"have no DICOM file under .*incomplete download.*--force"):
        layout.train_table(tmp_path)
