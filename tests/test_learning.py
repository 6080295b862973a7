"""Training learns on real data: the Engine against a plain PyTorch loop on scikit-learn's digit scans,
precise BatchNorm statistics, and the note when validation loss runs away from training loss."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from compkit import console, engine, optim
from compkit.config import Config

EPOCHS, BATCH, LR = 4, 32, 1e-2


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 1,797 real 8x8 scans as float32 (N, 1, 8, 8) in [0, 1]: (train, valid) tensors."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    images = torch.from_numpy(data.images[order] / 16.0).float().unsqueeze(1)
    targets = torch.from_numpy(data.target[order]).long()
    return (images[:1400], targets[:1400]), (images[1400:], targets[1400:])


class Items(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "target": self.targets[index]}


def small_cnn() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights for both loops
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def plain_loop(train, valid) -> list[float]:
    """What one writes by hand: AdamW, cosine per step, model.train()/eval(), mean cross entropy."""
    model = small_cnn()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*train), batch_size=BATCH, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(loader))
    losses = []
    for _ in range(EPOCHS):
        model.train()
        for images, targets in loader:
            loss = nn.functional.cross_entropy(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(model(valid[0]), valid[1]).item())
    return losses


def compkit_fit(train, valid, tmp_path, **options) -> list[dict]:
    config = Config(lr=LR, weight_decay=0.0, optimizer="adamw", scheduler="cosine", epochs=EPOCHS)
    model = small_cnn()
    train_loader = engine.make_loader(Items(*train), batch_size=BATCH, train=True, num_workers=0, seed=0)
    valid_loader = engine.make_loader(Items(*valid), batch_size=256, train=False, num_workers=0)
    optimizer = optim.build_optimizer(model, config)
    schedule = optim.build_scheduler(optimizer, config, len(train_loader))
    trainer = engine.Engine(model, nn.CrossEntropyLoss(), optimizer, schedule, device="cpu", quiet=True, **options)
    score = lambda targets, probabilities: float((probabilities.argmax(1) == targets).mean())  # noqa: E731
    trainer.fit(train_loader, valid_loader, epochs=EPOCHS, score=score, out_dir=tmp_path)
    return pd.read_csv(tmp_path / "metrics.csv").to_dict("records")


def test_the_engine_learns_like_a_plain_loop_on_real_digits(digits, tmp_path):
    train, valid = digits
    plain = plain_loop(train, valid)
    rows = compkit_fit(train, valid, tmp_path)
    ours = [row["valid_loss"] for row in rows]
    # Same model, initial weights, optimizer, schedule and step count; only the shuffling differs.
    assert plain[-1] < 0.5 and ours[-1] < 0.5, (plain, ours)
    assert all(abs(a - b) < 0.1 for a, b in zip(plain[1:], ours[1:])), (plain, ours)
    assert rows[-1]["score"] > 0.85


def test_precise_bn_averages_the_statistics_of_the_training_batches(digits):
    train, _ = digits
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(64, 10))
    model[0].running_mean.fill_(5.0)  # stale statistics, far from the data's
    loader = engine.make_loader(Items(*train), batch_size=100, train=True, num_workers=0, seed=3)
    trainer = engine.Engine(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                            device="cpu", quiet=True, precise_bn=4)
    trainer._recompute_batchnorm(loader)
    seen = torch.cat([batch["image"] for _, batch in zip(range(4), loader)])
    assert torch.allclose(model[0].running_mean, seen.mean().view(1), atol=1e-6)
    per_batch_var = torch.stack([chunk.var() for chunk in seen.split(100)])  # unbiased, as BatchNorm keeps it
    assert torch.allclose(model[0].running_var, per_batch_var.mean().view(1), atol=1e-5)
    assert model[0].momentum == 0.1 and model.training  # restored


def test_precise_bn_rescues_evaluation_of_an_imagenet_stem_at_28_pixels(digits, tmp_path):
    """The digits failure in small: a ResNet-18 reduces 28 px to 1x1 before its last stage, and at a
    high lr its running BatchNorm averages lag the weights; evaluation then collapses to chance."""
    import timm

    train, valid = digits

    def upscale(images: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(images, size=28, mode="bilinear", align_corners=False) * 2 - 1

    train, valid = (upscale(train[0][:640]), train[1][:640]), (upscale(valid[0]), valid[1])
    scores = {}
    for precise in (0, 200):
        torch.manual_seed(0)
        model = timm.create_model("resnet18", num_classes=10, in_chans=1)
        config = Config(lr=3e-3, weight_decay=0.0, scheduler="none", epochs=2)
        train_loader = engine.make_loader(Items(*train), batch_size=32, train=True, num_workers=0, seed=0)
        valid_loader = engine.make_loader(Items(*valid), batch_size=256, train=False, num_workers=0)
        trainer = engine.Engine(model, nn.CrossEntropyLoss(), optim.build_optimizer(model, config), device="cpu",
                                quiet=True, precise_bn=precise)
        summary = trainer.fit(train_loader, valid_loader, epochs=2, out_dir=tmp_path / str(precise),
                              score=lambda t, p: float((p.argmax(1) == t).mean()))
        scores[precise] = summary["best_score"]
    assert scores[200] > 0.85 and scores[200] - scores[0] > 0.15, scores


def test_validation_loss_far_above_training_loss_gets_one_note(capsys, monkeypatch):
    monkeypatch.setattr(console, "_NOTED", set())
    trainer = engine.Engine(nn.Linear(2, 2), device="cpu")
    history = [{"train_loss": 0.1, "valid_loss": 2.0}, {"train_loss": 0.1, "valid_loss": 1.9}]
    trainer._check_divergence(history)
    history.append({"train_loss": 0.1, "valid_loss": 0.9})  # 9x: not yet
    trainer._check_divergence(history)
    assert "validation loss" not in capsys.readouterr().err
    history[-1]["valid_loss"] = math.inf
    for _ in range(3):
        trainer._check_divergence(history)
    err = capsys.readouterr().err
    assert err.count("validation loss has been over 10x") == 1
    assert "precise_bn" in err and "learning rate" in err and "transforms" in err
