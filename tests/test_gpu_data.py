"""The device-resident loader: right batches, real augmentation, repeatable per epoch (run on CPU here)."""

import numpy as np
import torch

from compkit.gpu_data import DeviceLoader, augment


def images(n=10, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, n)


def test_unaugmented_batches_are_the_normalised_images_in_order():
    data, targets = images()
    loader = DeviceLoader(data, targets, batch_size=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                          device="cpu", train=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # evaluation keeps the short last batch
    first = batches[0]["image"]
    expected = (torch.from_numpy(data[:4]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert first.shape == (4, 3, 8, 8) and torch.allclose(first, expected, atol=1e-5)
    assert batches[2]["target"].tolist() == targets[8:].tolist()


def test_augment_translates_with_zero_padding_and_flips_whole_images():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1) + 1
    out = augment(image, pad=1, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape and out.dtype == torch.uint8
    variants = {tuple(x.flatten().tolist()) for x in out}
    assert len(variants) > 5  # different shifts and flips across the batch
    for x in out[:, 0]:
        nonzero = x[x > 0]
        assert len(nonzero) >= 9  # at most one row and one column shifted out
        # each surviving row is a run of consecutive pixels of the original (maybe mirrored)
        row = x[x.sum(1).argmax()]
        row = row[row > 0]
        steps = (row[1:].int() - row[:-1].int()).abs()
        assert (steps == 1).all()
    untouched = augment(image, pad=0, flip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(untouched, image)


def test_training_batches_repeat_for_an_epoch_and_change_between_epochs():
    data, targets = images(32)
    loader = DeviceLoader(data, targets, batch_size=8, mean=(0, 0, 0), std=(1, 1, 1), device="cpu", seed=3)
    loader.sampler.set_epoch(1)
    first = [b["image"] for b in loader]
    again = [b["image"] for b in loader]
    loader.sampler.set_epoch(2)
    other = [b["image"] for b in loader]
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_targets_follow_their_images_through_the_shuffle():
    data = np.stack([np.full((4, 4, 1), i, np.uint8) for i in range(20)])
    loader = DeviceLoader(data, np.arange(20), batch_size=5, mean=(0,), std=(1 / 255,), device="cpu",
                          pad=0, flip=False)
    for batch in loader:
        assert torch.equal(batch["image"][:, 0, 0, 0].long(), batch["target"])
