"""Automatic augmentation policies (torchvision's RandAugment, TrivialAugmentWide, AutoAugment) in front of a
competition's own train transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compkit import loaders, registry
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _build


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3)])
def test_a_policy_changes_uint8_images_keeps_their_shape_and_repeats_with_the_seed(policy, shape):
    config = Config(augment=policy, augment_magnitude=15)
    transform = _build.with_policy(None, config)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    outputs = []
    for seed in (1, 2, 3, 4, 5, 1):
        torch.manual_seed(seed)
        outputs.append(transform(image=image)["image"])
    assert all(out.shape == image.shape and out.dtype == np.uint8 for out in outputs)
    assert any(not np.array_equal(out, image) for out in outputs)  # it augments
    assert np.array_equal(outputs[0], outputs[-1])  # the same seed, the same augmentation


def test_the_policy_runs_before_the_competitions_train_transforms_and_only_for_training(tmp_path):
    comp = registry.get().competition("digits")
    comp.make_demo(tmp_path, seed=0)
    table = comp.train_table(tmp_path).head(8)
    config = Config(augment="trivialaugment", image_size=28, num_workers=0, device="cpu", batch_size=4)
    train = _build.loader(comp, table, tmp_path, "train", config).dataset.dataset
    valid = _build.loader(comp, table, tmp_path, "valid", config).dataset.dataset
    assert [type(t).__name__ for t in train.transform.transforms][:1] == ["Lambda"]
    assert "Lambda" not in [type(t).__name__ for t in getattr(valid.transform, "transforms", [])]
    item = loaders.SeededDataset(train)[(0, 7)]
    assert item["image"].dtype == torch.float32 and item["image"].shape[-2:] == (28, 28)
    with pytest.raises(CompkitError, match="config key 'augment' must be one of none, randaugment"):
        Config(augment="mixup")
