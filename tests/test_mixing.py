"""Mixup and cutmix through timm's Mixup: soft targets that sum to one, odd batches, the last epochs unmixed,
and a digits training that runs with them."""

from __future__ import annotations

import pytest
import torch

from compkit import registry
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _build


def digits():
    return registry.get().competition("digits")


@pytest.mark.parametrize("keys", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_mixed_targets_are_probabilities_and_an_odd_batch_keeps_its_last_sample(keys):
    config = Config(epochs=5, mix_prob=1.0, mix_off_epoch=2, **keys)
    mix = _build.mixing(digits(), config)
    torch.manual_seed(0)
    images, targets = torch.rand(7, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5, 6])
    mixed, soft = mix(images, targets, epoch=1)
    assert soft.shape == (7, 10) and torch.allclose(soft.sum(1), torch.ones(7))
    assert (soft[:6].max(1).values < 1).any()  # mixed: not all one-hot any more
    assert torch.equal(soft[6], torch.nn.functional.one_hot(torch.tensor(6), 10).float())  # the odd one out
    assert torch.equal(mixed[6], images[6]) and not torch.equal(mixed[:6], images[:6])
    assert torch.equal(targets, torch.tensor([0, 1, 2, 3, 4, 5, 6]))  # the caller's tensors are not changed
    for epoch in (4, 5):  # the last mix_off_epoch epochs are not mixed
        same, hard = mix(images, targets, epoch=epoch)
        assert same is images and hard is targets


def test_mixing_is_off_by_default_and_refused_outside_classification():
    assert _build.mixing(digits(), Config()) is None
    with pytest.raises(CompkitError, match="mixup and cutmix are for classification; siim is segmentation"):
        _build.mixing(registry.get().competition("siim"), Config(mixup=0.2))


def test_a_digits_fold_trains_with_mixup_and_the_loss_sees_soft_targets(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from compkit import losses
    from compkit.cli import cli

    seen = []
    forward = losses.CrossEntropy.forward
    monkeypatch.setattr(losses.CrossEntropy, "forward",
                        lambda self, logits, target: seen.append((torch.is_grad_enabled(), target.dtype))
                        or forward(self, logits, target))
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r")}
    runner = CliRunner()
    assert runner.invoke(cli, ["download", "digits", "--demo"], env=env).exit_code == 0
    result = runner.invoke(cli, ["train", "digits", "--fold", "0", "--epochs", "2", "--batch-size", "63",
                                 "--device", "cpu", "--quiet", "--set", "num_workers=0", "--set", "precise_bn=0",
                                 "--set", "model=timm/resnet10t", "--set", "mixup=0.2", "--set", "mix_off_epoch=1"],
                           env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    training = [dtype for grad, dtype in seen if grad]  # validation runs without gradients
    assert torch.float32 in training and torch.int64 in training  # epoch 1 mixed (soft), epoch 2 plain indices
