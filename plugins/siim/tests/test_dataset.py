"""Datasets over the resized-input cache: masks merged once at each image's size, shared by every subset."""

import pickle

import numpy as np
import pytest

from compkit.config import Config
from compkit_siim import Siim, SiimClassification, layout
from compkit_siim.dataset import CACHE, MaskReader, build, resize_mask
from compkit_siim.demo import write_demo
from compkit_siim.labels import merge_regions, read_labels, regions_by_image

SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim-dataset")
    write_demo(root, seed=1)
    return root


def config(**changes):
    return Config(image_size=SIZE, **changes)


def test_cached_masks_are_the_merged_masks_resized(root):
    table = layout.train_table(root)
    positive = table.index[table["has_mask"] == 1][:3]
    dataset = Siim().dataset(table.loc[positive], root, "valid", config())
    regions = regions_by_image(read_labels(root / layout.LABELS))
    for index, row in enumerate(positive):
        expected = resize_mask(merge_regions(regions[table["ImageId"][row]], (256, 256)), SIZE)
        target = dataset[index]["target"]
        assert target.shape == (1, SIZE, SIZE) and target.dtype.is_floating_point
        assert np.array_equal(target[0].numpy(), expected) and expected.any()


def test_subsets_index_into_one_cache_per_stage(root):
    table = layout.train_table(root)
    first = Siim().dataset(table.iloc[:10], root, "train", config())
    second = Siim().dataset(table.iloc[10:], root, "valid", config())
    assert first.image_file == second.image_file and first.mask_file == second.mask_file
    assert len(list((root / CACHE).glob(f"train-images-{SIZE}-*.npy"))) == 1
    assert second.positions.tolist() == list(range(10, len(table)))


def test_a_dataset_pickles_without_its_arrays(root):
    dataset = Siim().dataset(layout.train_table(root).head(4), root, "valid", config())
    dataset[0]  # opens the memory maps
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored._arrays == {} and len(pickle.dumps(dataset)) < 10_000
    assert np.array_equal(restored[1]["image"].numpy(), dataset[1]["image"].numpy())


def test_classification_items_carry_has_mask(root):
    table = SiimClassification().train_table(root)
    dataset = SiimClassification().dataset(table.head(6), root, "valid", config())
    assert [int(dataset[i]["target"]) for i in range(6)] == table["has_mask"].head(6).tolist()


def test_edited_masks_change_the_mask_readers_name():
    first = MaskReader({"a": ["1 2"]}, SIZE, "train-rle.csv")
    second = MaskReader({"a": ["1 3"]}, SIZE, "train-rle.csv")
    assert first.__qualname__ != second.__qualname__


def test_shrinking_a_mask_keeps_pixels_at_least_half_covered():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0:2, 0:1] = 1  # half of the first 2x2 block
    mask[4:6, 4:5] = 1
    mask[5, 5] = 1  # three quarters of another
    small = resize_mask(mask, 4)
    assert small.tolist()[0][0] == 1 and small[2, 2] == 1 and small.sum() == 2


def test_test_stage_has_images_only(root):
    dataset = build(
        layout.test_table(root).head(3), root, "test", SIZE, lambda image: {"image": image / 255.0}
    )
    item = dataset[2]
    assert set(item) == {"image"} and item["image"].shape == (1, SIZE, SIZE)
