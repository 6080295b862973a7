"""Fine-tuning controls: a frozen body for the first epochs, then all of it trains."""

from __future__ import annotations

import torch

from compkit import engine, optim
from compkit.config import Config
from compkit.pipeline import _build
from tests.test_engine import Samples, classifier


def test_the_body_stays_frozen_for_freeze_epochs_then_trains(tmp_path):
    torch.manual_seed(0)
    model = classifier()
    body = _build.body_parameters(model)
    head = optim.head_parameters(model)
    assert body and head and not {id(p) for p in body} & {id(p) for p in head}
    config = Config(lr=0.05, epochs=2, weight_decay=0.1, freeze_epochs=1)
    optimizer = optim.build_optimizer(model, config)
    loader = engine.make_loader(Samples(64), batch_size=16, train=True, num_workers=0)
    schedule = optim.build_scheduler(optimizer, config, optim.optimizer_steps_per_epoch(len(loader), 1))
    start = {name: value.detach().clone() for name, value in model.named_parameters()}
    trainer = engine.Engine(model, torch.nn.CrossEntropyLoss(), optimizer, schedule, device="cpu", quiet=True,
                            frozen=body, freeze_epochs=1)
    seen = []
    valid = engine.make_loader(Samples(32, offset=1), batch_size=16, train=False, num_workers=0)

    def snapshot(epoch, metrics):
        seen.append({name: value.detach().clone() for name, value in model.named_parameters()})

    trainer.fit(loader, valid, epochs=2, score=lambda t, p: float((p.argmax(1) == t).mean()),
                on_epoch_end=snapshot, out_dir=tmp_path)
    after_1, after_2 = seen
    assert torch.equal(after_1["0.weight"], start["0.weight"]) and torch.equal(after_1["0.bias"], start["0.bias"])
    assert not torch.equal(after_1["5.weight"], start["5.weight"])  # the head trained in epoch 1
    assert not torch.equal(after_2["0.weight"], after_1["0.weight"])  # and the body from epoch 2


def test_the_checkpoint_selection_picks_the_metric_the_training_loss_or_the_last_epoch(tmp_path):
    import pandas as pd
    import pytest

    from compkit.errors import CompkitError

    def fit(select):
        torch.manual_seed(0)
        model = classifier()
        config = Config(lr=0.3, epochs=5, scheduler="none")
        optimizer = optim.build_optimizer(model, config)
        loader = engine.make_loader(Samples(64), batch_size=16, train=True, num_workers=0)
        valid = engine.make_loader(Samples(32, offset=1), batch_size=16, train=False, num_workers=0)
        trainer = engine.Engine(model, torch.nn.CrossEntropyLoss(), optimizer, device="cpu", quiet=True, select=select)
        scores = iter([0.5, 0.9, 0.6, 0.7, 0.8])  # the validation metric peaks at epoch 2
        out = tmp_path / select
        result = trainer.fit(loader, valid, epochs=5, score=lambda t, p: next(scores), out_dir=out)
        return result, pd.read_csv(out / "metrics.csv"), torch.load(out / "best.pt", weights_only=True)["epoch"]

    result, metrics, saved = fit("metric")
    assert result["best_epoch"] == saved == 2
    result, metrics, saved = fit("train_loss")
    lowest = metrics.loc[metrics["train_loss"].idxmin(), "epoch"]
    assert lowest != 2 and result["best_epoch"] == saved == lowest
    result, metrics, saved = fit("last")
    assert result["best_epoch"] == saved == 5
    with pytest.raises(CompkitError, match="unknown checkpoint selection 'best'"):
        engine.Engine(classifier(), device="cpu", select="best")


def test_swa_averages_the_last_epochs_recomputes_batchnorm_and_is_kept_only_when_it_scores_better(tmp_path, capsys):
    from torch import nn

    def fit(scores, out):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(4, 3))
        config = Config(lr=0.1, epochs=5, scheduler="none")
        optimizer = optim.build_optimizer(model, config)
        loader = engine.make_loader(Samples(64), batch_size=16, train=True, num_workers=0)
        valid = engine.make_loader(Samples(32, offset=1), batch_size=16, train=False, num_workers=0)
        trainer = engine.Engine(model, torch.nn.CrossEntropyLoss(), optimizer, device="cpu", quiet=True, swa=3)
        snapshots = []
        scores = iter(scores)
        result = trainer.fit(loader, valid, epochs=5, score=lambda t, p: next(scores), out_dir=out,
                             on_epoch_end=lambda e, m: snapshots.append(
                                 {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return result, snapshots, torch.load(out / "best.pt", weights_only=True)

    # the average scores 0.9 against the epochs' best 0.5: it becomes best.pt
    result, snapshots, best = fit([0.1, 0.2, 0.3, 0.4, 0.5, 0.9], tmp_path / "kept")
    assert result["swa"]["first_epoch"] == 3 and result["swa"]["kept"] and result["best_score"] == 0.9
    assert "best: swa of epochs 3-5, score 0.90000" in capsys.readouterr().out
    average = torch.stack([snapshot["0.weight"] for snapshot in snapshots[2:]]).mean(0)
    assert torch.allclose(best["model"]["0.weight"], average, atol=1e-6)
    plain_mean = torch.stack([snapshot["1.running_mean"] for snapshot in snapshots[2:]]).mean(0)
    assert not torch.allclose(best["model"]["1.running_mean"], plain_mean)  # BatchNorm recomputed for it
    # scoring worse than the best epoch, best.pt stays that epoch
    result, snapshots, best = fit([0.1, 0.2, 0.3, 0.4, 0.5, 0.0], tmp_path / "dropped")
    assert not result["swa"]["kept"] and result["best_epoch"] == 5 and result["best_score"] == 0.5
    assert torch.equal(best["model"]["0.weight"], snapshots[4]["0.weight"])
