"""Tests for compkit.loaders' seeding shortcuts and batch normalisation: the batches stay the same, bit for bit."""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from compkit import loaders
from compkit.datasets import ArrayDataset, NormalizeBatch, split_normalize, transform_randomness

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
FIXED = A.Compose([A.Normalize(mean=MEAN, std=STD)])


def unchanged(image, **_):
    return image


def images(count: int = 10, shape: tuple[int, ...] = (12, 12, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def augmentations(size: int = 12) -> A.Compose:
    """A training pipeline that draws from albumentations' generators at every step."""
    return A.Compose([
        A.PadIfNeeded(size + 4, size + 4, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(size, size),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-20, 20), p=0.5),
        A.RandomBrightnessContrast(p=0.5),
        A.Normalize(mean=MEAN, std=STD),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        (None, "none"),
        (FIXED, "none"),
        (
            A.Compose(
                [A.Resize(8, 8), A.PadIfNeeded(10, 10), A.CenterCrop(9, 9), A.Normalize(), A.ToFloat()]
            ),
            "none",
        ),
        (A.Compose([A.HorizontalFlip(p=0), A.Sequential([A.Resize(8, 8)], p=1), A.Normalize()]), "none"),
        (
            A.Compose([A.Sequential([A.Resize(8, 8)])]),
            "transform",
        ),  # Sequential is applied at p=0.5 by default
        (A.Compose([A.HorizontalFlip(p=0.5), A.Normalize()]), "transform"),
        (A.Compose([A.Normalize(p=0.5)]), "transform"),
        (A.Compose([A.PadIfNeeded(10, 10, position="random")]), "transform"),
        (A.Compose([A.LongestMaxSize(max_size=[8, 16])]), "transform"),
        (A.Compose([A.OneOf([A.Resize(8, 8), A.CenterCrop(4, 4)])]), "transform"),
        (A.Compose([A.HorizontalFlip(), A.Lambda(image=unchanged)]), "any"),
        (lambda image: {"image": image}, "any"),
    ],
)
def test_transform_randomness(transform, expected):
    assert transform_randomness(transform) == expected


def test_datasets_that_do_not_say_count_as_drawing_anything():
    class Plain(Dataset):
        def __len__(self):
            return 1

    assert loaders.randomness(Plain()) == "any"
    assert loaders.randomness(ArrayDataset(images(), None, FIXED)) == "none"
    assert loaders.randomness(ArrayDataset(images(), None, augmentations())) == "transform"


def test_a_fixed_dataset_is_not_reseeded():
    loader = loaders.make_loader(
        ArrayDataset(images(), None, FIXED), batch_size=4, train=False, num_workers=0
    )
    random.seed(5)
    np.random.seed(5)
    python, numpy = random.getstate(), np.random.get_state()[1].copy()
    list(loader)
    assert random.getstate() == python and np.array_equal(np.random.get_state()[1], numpy)


@pytest.mark.parametrize(
    ("shape", "transform"),
    [
        ((12, 12, 3), FIXED),
        ((12, 12), A.Compose([A.Normalize(mean=0.4, std=0.3)])),
        ((12, 12, 1), A.Compose([A.Normalize(mean=(0.4,), std=(0.3,), max_pixel_value=200)])),
        (
            (9, 14, 3),
            A.Compose([A.Resize(10, 10), A.PadIfNeeded(12, 12), A.CenterCrop(11, 11), A.Normalize()]),
        ),
    ],
)
def test_batch_normalisation_gives_the_per_image_batches_bit_for_bit(shape, transform):
    dataset = ArrayDataset(images(10, shape), np.arange(10), transform)
    loader = loaders.make_loader(dataset, batch_size=4, train=False, num_workers=0)
    assert isinstance(loader.collate_fn, NormalizeBatch)  # the batch path, not the default collate
    batches = list(loader)
    expected = [dataset[index] for index in range(len(dataset))]
    assert torch.equal(
        torch.cat([batch["image"] for batch in batches]), torch.stack([e["image"] for e in expected])
    )
    assert torch.cat([batch["target"] for batch in batches]).tolist() == list(range(10))
    assert batches[0]["image"].dtype == torch.float32 and batches[0]["image"].is_contiguous()


@pytest.mark.parametrize(
    "transform",
    [
        A.Compose([A.Normalize(normalization="image")]),  # per-image statistics: no per-pixel table
        A.Compose([A.HorizontalFlip(p=0.5), A.Normalize()]),  # random
        A.Compose([A.ToFloat(), A.Normalize()]),  # Normalize no longer sees uint8
        A.Compose([A.Normalize(), A.Resize(8, 8)]),  # not last
        None,
    ],
)
def test_no_batch_normalisation_unless_it_is_exact(transform):
    assert split_normalize(transform) is None
    loader = loaders.make_loader(
        ArrayDataset(images(), None, transform), batch_size=4, train=False, num_workers=0
    )
    assert not isinstance(loader.collate_fn, NormalizeBatch)


def test_float_images_are_normalised_per_image():
    dataset = ArrayDataset(images().astype(np.float32), None, FIXED)
    assert dataset.normalized_in_batches() is None


def test_a_training_loader_normalises_per_image():
    loader = loaders.make_loader(ArrayDataset(images(), None, FIXED), batch_size=4, train=True, num_workers=0)
    assert not isinstance(loader.collate_fn, NormalizeBatch)


class Reference(Dataset):
    """The seeding as it was before the shortcuts: every global generator and the Compose, every sample."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        state = None if get_worker_info() is not None else torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)
        self.dataset.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        try:
            return self.dataset[index]
        finally:
            if state is not None:
                torch.set_rng_state(state)


def epochs_of(loader: DataLoader, epochs: int = 3) -> list[torch.Tensor]:
    """Every batch's images over ``epochs`` epochs, with numpy's global state after each (Mixup draws from it)."""
    batches = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            batches.append(batch["image"])
        batches.append(torch.from_numpy(np.random.get_state()[1].astype(np.int64)))
    return batches


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_batches_are_the_same_as_with_the_old_seeding(num_workers):
    dataset = ArrayDataset(images(12), np.arange(12), augmentations())
    ours = loaders.make_loader(dataset, batch_size=4, train=True, num_workers=num_workers, seed=3)
    reference = DataLoader(Reference(dataset), batch_size=4, sampler=loaders.EpochSampler(12, shuffle=True, seed=3),
                           drop_last=True, num_workers=num_workers)  # fmt: skip
    expected, actual = epochs_of(reference), epochs_of(ours)
    assert len(actual) == len(expected) == 3 * (3 + 1)
    for first, second in zip(expected, actual, strict=True):
        assert torch.equal(first, second)
    assert not torch.equal(actual[0], actual[4])  # the first batches of two epochs: it is random


def test_normalize_batch_applies_albumentations_table():
    normalize = A.Normalize(mean=MEAN, std=STD)
    batch = torch.from_numpy(images(3))
    expected = torch.stack(
        [torch.from_numpy(normalize(image=image.numpy())["image"]).permute(2, 0, 1) for image in batch]
    )
    assert torch.equal(NormalizeBatch(normalize).apply(batch), expected)


def test_drop_last_false_keeps_the_short_last_training_batch_but_never_one_of_a_single_sample():
    from compkit.loaders import make_loader

    class Rows(torch.utils.data.Dataset):
        def __init__(self, size):
            self.size = size

        def __len__(self):
            return self.size

        def __getitem__(self, index):
            return {"image": torch.zeros(1), "target": torch.tensor(index)}

    def sizes(count, **options):
        loader = make_loader(Rows(count), batch_size=4, train=True, num_workers=0, device="cpu", **options)
        return [len(batch["target"]) for batch in loader]

    assert sizes(10) == [4, 4]  # the default drops the partial batch
    assert sizes(10, drop_last=False) == [4, 4, 2]
    assert sizes(9, drop_last=False) == [4, 4]  # one sample alone would break BatchNorm in training
    seen = torch.cat([b["target"] for b in make_loader(Rows(10), batch_size=4, train=True, num_workers=0,
                                                        device="cpu", drop_last=False)])
    assert sorted(seen.tolist()) == list(range(10))  # every row once: nothing lost
