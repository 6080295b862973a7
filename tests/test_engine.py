"""Tests for compkit.engine: fit's files, early stopping, errors, determinism, resume, EMA, predict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from compkit import console, engine, oof, optim, tta
from compkit.config import Config
from compkit.errors import CompkitError

WORKER = Path(__file__).with_name("_ddp_worker.py")
CLASSES = 3
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Samples(torch.utils.data.Dataset):
    """Item: image float32 (1, 8, 8), randomly flipped; target int64 class, or a float32 (1, 8, 8) mask."""

    def __init__(self, size: int, dense: bool = False, offset: int = 0) -> None:
        generator = torch.Generator().manual_seed(100 + offset)
        self.images = torch.randn(size, 1, 8, 8, generator=generator)
        self.classes = torch.arange(size) % CLASSES
        self.images += self.classes.view(-1, 1, 1, 1).float()  # learnable
        self.masks = (self.images > 0.5).float()
        self.dense = dense

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        flip = bool(torch.rand(()) < 0.5)  # an augmentation, drawn from the sample's seed
        image, mask = self.images[index], self.masks[index]
        if flip:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"image": image, "target": mask if self.dense else self.classes[index]}


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, CLASSES),
    )


def segmenter() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))


def accuracy(targets: np.ndarray, probabilities: np.ndarray) -> float:
    return float((probabilities.argmax(1) == targets).mean())


def loaders(
    dense: bool = False, train_size: int = 24, valid_size: int = 11, num_workers: int = 0, seed: int = 0
):
    train = engine.make_loader(
        Samples(train_size, dense), batch_size=4, train=True, num_workers=num_workers, seed=seed
    )
    valid = engine.make_loader(
        Samples(valid_size, dense, 1), batch_size=4, train=False, num_workers=0, seed=seed
    )
    return train, valid


def build(model_factory=classifier, loss=None, *, epochs=2, steps=6, seed=0, **options) -> engine.Engine:
    """An Engine over a freshly seeded model with AdamW and the cosine schedule."""
    torch.manual_seed(seed)
    model = model_factory()
    config = Config(epochs=epochs, lr=1e-2, ema=options.get("ema", 0.0), seed=seed)
    optimizer = optim.build_optimizer(model, config)
    schedule = optim.build_scheduler(optimizer, config, steps)
    options.setdefault("device", "cpu")
    return engine.Engine(
        model, loss or nn.CrossEntropyLoss(), optimizer, schedule, seed=seed, quiet=True, **options
    )


def test_classification_fit_writes_every_file(tmp_path):
    train, valid = loaders()
    trainer = build()
    ids = [f"id{i}" for i in range(11)]
    result = trainer.fit(
        train,
        valid,
        epochs=2,
        score=accuracy,
        metric="accuracy",
        out_dir=tmp_path,
        config={"lr": 0.01},
        valid_ids=ids,
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "best.pt",
        "curves.png",
        "last.pt",
        "metrics.csv",
        "oof.npz",
    ]  # and no temporary file left behind
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == [
        "epoch",
        "train_loss",
        "valid_loss",
        "accuracy",
        "lr",
        "seconds",
        "images_per_second",
    ]
    assert metrics["epoch"].tolist() == [1, 2]
    assert result["best_score"] == metrics["accuracy"].max()
    best = metrics[metrics["accuracy"] == metrics["accuracy"].max()]  # ties go to the lower valid loss
    assert result["best_epoch"] == int(best["epoch"][best["valid_loss"].idxmin()])
    oof = np.load(tmp_path / "oof.npz")
    assert oof["ids"].tolist() == ids
    assert oof["probabilities"].dtype == np.float16 and oof["probabilities"].shape == (11, CLASSES)
    assert oof["targets"].tolist() == [i % CLASSES for i in range(11)]
    assert accuracy(oof["targets"], oof["probabilities"].astype(np.float32)) == result["best_score"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_load_with_weights_only(tmp_path):
    train, valid = loaders()
    build(ema=0.5).fit(train, valid, epochs=2, score=accuracy, out_dir=tmp_path, config={"seed": 0})
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert {
        "model",
        "ema",
        "optimizer",
        "schedule",
        "scaler",
        "epoch",
        "step",
        "best_score",
        "best_epoch",
        "history",
        "config",
        "metric",
        "higher_is_better",
        "stopped_early",
    } <= set(last)
    assert last["epoch"] == 2 and last["step"] == 12 and last["config"] == {"seed": 0}
    assert best["epoch"] == best["best_epoch"] and "optimizer" not in best
    assert len(last["history"]) == 2


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "pickle"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, damage):
    train, valid = loaders()
    build().fit(train, valid, epochs=1, score=accuracy, out_dir=tmp_path)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    if damage == "pickle":
        import pickle

        class Payload:
            def __reduce__(self):
                return (os.system, ("echo pwned",))

        torch.save({"model": Payload()}, path, _use_new_zipfile_serialization=True, pickle_module=pickle)
    else:
        path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 64}[damage])
    with pytest.raises(CompkitError, match=rf"checkpoint {path} is damaged or not safe to load .*delete it"):
        build().load(path)
    with pytest.raises(CompkitError, match="is damaged"):
        build().fit(train, valid, epochs=2, score=accuracy, out_dir=tmp_path, resume=True)


def test_dense_output_is_squeezed_for_score_and_oof(tmp_path):
    seen = {}

    def dice(targets, probabilities):
        seen["shapes"] = targets.shape, probabilities.shape
        overlap = ((probabilities > 0.5) * targets).sum()
        return float(2 * overlap / max(1.0, (probabilities > 0.5).sum() + targets.sum()))

    train, valid = loaders(dense=True)
    trainer = build(segmenter, nn.BCEWithLogitsLoss(), task="segmentation")
    result = trainer.fit(train, valid, epochs=2, score=dice, metric="dice", out_dir=tmp_path)
    assert seen["shapes"] == ((11, 8, 8), (11, 8, 8))
    stored = np.load(tmp_path / "oof.npz")
    assert stored["probabilities"].shape == (11, 8, 8) and stored["targets"].shape == (11, 8, 8)
    # compact: probabilities in 1/255 steps and the 0/1 masks as uint8, 2 bytes a pixel
    assert stored["probabilities"].dtype == stored["targets"].dtype == np.uint8
    assert int(stored["epoch"]) == result["best_epoch"]
    saved = oof.load(tmp_path / "oof.npz")
    assert dice(np.asarray(saved.targets, np.float32), saved.probabilities()) == result["best_score"]
    predicted = trainer.predict(valid)  # the last epoch is the best here, so it predicts what oof.npz holds
    assert predicted.shape == (11, 8, 8)
    np.testing.assert_allclose(saved.probabilities(), predicted, atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize(
    ("higher_is_better", "scores"), [(True, [0.5, 0.7, 0.6, 0.65, 0.9]), (False, [0.5, 0.3, 0.4, 0.35, 0.1])]
)
def test_early_stopping_by_the_metric_direction(tmp_path, higher_is_better, scores):
    sequence = iter(scores)
    train, valid = loaders()
    result = build(epochs=5).fit(
        train,
        valid,
        epochs=5,
        score=lambda t, p: next(sequence),
        patience=2,
        higher_is_better=higher_is_better,
        out_dir=tmp_path,
    )
    assert result == {
        "metric": "score",
        "best_score": scores[1],
        "best_epoch": 2,
        "epochs_run": 4,
        "stopped_early": True,
    }
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 4
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_non_finite_loss_names_epoch_and_step():
    calls = {"count": 0}
    cross_entropy = nn.CrossEntropyLoss()

    def breaking(logits, target):
        calls["count"] += 1
        loss = cross_entropy(logits, target)
        return loss * float("nan") if calls["count"] == 3 else loss

    train, valid = loaders()
    with pytest.raises(CompkitError, match=r"loss is nan in epoch 1, step 3 of 6"):
        build(loss=breaking).fit(train, valid, epochs=2, score=accuracy)


def fitted_weights(seed: int = 0, num_workers: int = 0) -> dict[str, torch.Tensor]:
    train, valid = loaders(num_workers=num_workers, seed=seed)
    trainer = build(seed=seed)
    trainer.fit(train, valid, epochs=2, score=accuracy)
    return trainer.model.state_dict()


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_one_seed_repeats_exactly_whatever_the_worker_count():
    reference = fitted_weights()
    assert_same_weights(reference, fitted_weights())
    assert_same_weights(reference, fitted_weights(num_workers=2))  # per-sample seeds, not per-worker
    other = fitted_weights(seed=1)
    assert not all(torch.equal(reference[name], other[name]) for name in reference)


def test_gradient_accumulation_matches_a_bigger_batch():
    images, targets = torch.randn(32, 1, 2, 2), torch.randn(32, 3)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, index):
            return {"image": images[index], "target": targets[index]}

    def train(batch_size: int, accumulate: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = engine.Engine(
            model, nn.MSELoss(), optimizer, activation=None, accumulate=accumulate, device="cpu", quiet=True
        )
        loader = engine.make_loader(Pairs(), batch_size=batch_size, train=True, num_workers=0)
        valid = engine.make_loader(Pairs(), batch_size=8, train=False, num_workers=0)
        trainer.fit(
            loader, valid, epochs=2, score=lambda t, p: float(((t - p) ** 2).mean()), higher_is_better=False
        )
        return model[1].weight.detach()

    torch.testing.assert_close(train(8, 1), train(4, 2))
    torch.testing.assert_close(train(8, 1), train(2, 4))
    assert not torch.allclose(train(8, 1), train(4, 1))  # the test can tell batch sizes apart


def test_ema_weights_are_scored_saved_and_loaded(tmp_path):
    train, valid = loaders()
    trainer = build(ema=0.9)
    trainer.fit(train, valid, epochs=1, score=accuracy, out_dir=tmp_path)  # oof.npz is then the last epoch
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert not torch.equal(last["ema"]["0.weight"], last["model"]["0.weight"])
    oof = np.load(tmp_path / "oof.npz")["probabilities"]
    predicted = trainer.predict(valid)  # by the EMA weights, as oof.npz was
    np.testing.assert_allclose(predicted, oof.astype(np.float32), atol=1e-3)

    fresh = engine.Engine(classifier(), device="cpu", quiet=True)
    fresh.load(tmp_path / "last.pt", ema=True)
    assert torch.equal(fresh.model.state_dict()["0.weight"], last["ema"]["0.weight"])
    fresh.load(tmp_path / "last.pt", ema=False)
    assert torch.equal(fresh.model.state_dict()["0.weight"], last["model"]["0.weight"])


def test_predict_keeps_dataset_order_and_merges_tta_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES))  # not flip-invariant
    trainer = engine.Engine(model, device="cpu", quiet=True)
    dataset = Samples(10)
    loader = engine.make_loader(dataset, batch_size=3, train=False, num_workers=0)
    batches = torch.cat([batch["image"] for batch in loader])  # per-sample seeds: the same flips each pass
    with torch.no_grad():
        plain = model(batches).softmax(1)
        flipped = model(batches.flip(-1)).softmax(1)
    np.testing.assert_allclose(trainer.predict(loader), plain.numpy(), rtol=1e-6)
    merged = trainer.predict(loader, views=tta.views("hflip"))
    np.testing.assert_allclose(merged, ((plain + flipped) / 2).numpy(), rtol=1e-6)
    assert not np.allclose(merged, plain.numpy())


def test_resuming_a_finished_run_trains_nothing_more(tmp_path):
    train, valid = loaders()
    first = build().fit(train, valid, epochs=2, score=accuracy, out_dir=tmp_path)
    again = build(seed=5).fit(train, valid, epochs=2, score=accuracy, out_dir=tmp_path, resume=True)
    assert again == first
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 2


def test_a_long_run_of_skipped_fp16_steps_stops_the_run():
    trainer = engine.Engine(classifier(), device="cpu", quiet=True)
    trainer._count_skips(False, 1, 0)
    trainer._count_skips(True, 1, 1)  # a taken step ends the run of skips
    for index in range(engine.MAX_SKIPPED_STEPS - 1):
        trainer._count_skips(False, 3, index)
    with pytest.raises(CompkitError, match=r"skipped 50 steps in a row \(epoch 3, step 50\)"):
        trainer._count_skips(False, 3, 49)


def test_a_schedule_built_for_other_steps_is_refused():
    train, valid = loaders()  # 6 batches of 4
    with pytest.raises(CompkitError, match="built for 5 optimizer steps per epoch but this loader gives 6"):
        build(steps=5).fit(train, valid, epochs=2, score=accuracy)


def test_amp_on_cpu_runs_float32_with_a_note(capsys, monkeypatch):
    monkeypatch.setattr(console, "_NOTED", set())  # notes print once per process: start from none
    trainer = engine.Engine(classifier(), device="cpu", amp="bf16")
    assert trainer.amp_dtype is None and trainer.scaler is None
    assert "float32" in capsys.readouterr().err


def run_worker(out_dir: Path, *arguments: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out_dir), *arguments],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def without_timings(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=list(engine.TIMING_COLUMNS))


def test_resume_after_sigkill_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = run_worker(whole)
    victim = run_worker(killed, "--pause-after", "2")
    wait_for(killed / "paused", victim)  # epoch 2 saved, epoch 3 a few batches in
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 2
    resumed = run_worker(killed, "--resume")
    for process in (uninterrupted, resumed):
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
    for name in ("last.pt", "best.pt"):
        expected = torch.load(whole / name, weights_only=True)
        actual = torch.load(killed / name, weights_only=True)
        assert_same_weights(expected["model"], actual["model"])
        assert_same_weights(expected["ema"], actual["ema"])
        assert (expected["epoch"], expected["best_score"]) == (actual["epoch"], actual["best_score"])
    pd.testing.assert_frame_equal(
        without_timings(whole / "metrics.csv"), without_timings(killed / "metrics.csv")
    )
    assert len(pd.read_csv(killed / "metrics.csv")) == 4
    # oof.npz is written once, at the end: the killed run had none, the resumed one has the same
    expected, actual = np.load(whole / "oof.npz"), np.load(killed / "oof.npz")
    assert int(actual["epoch"]) == int(expected["epoch"]) == torch.load(whole / "best.pt", weights_only=True)["epoch"]
    np.testing.assert_array_equal(expected["probabilities"], actual["probabilities"])


def test_ctrl_c_says_how_to_resume(tmp_path):
    process = run_worker(tmp_path, "--pause-after", "1")
    wait_for(tmp_path / "paused", process)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 3, errors  # the worker's exit code for a CompkitError
    assert "interrupted in epoch 2" in errors and "holds epoch 1" in errors and "resume" in errors
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    assert int(np.load(tmp_path / "oof.npz")["epoch"]) == 1  # the best epoch's predictions were kept


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_channels_last_fit(tmp_path, amp):
    train, valid = loaders()
    trainer = build(device="cuda", amp=amp, channels_last=True, clip_grad=1.0, ema=0.9)
    assert (trainer.scaler is not None) == (amp == "fp16")
    result = trainer.fit(train, valid, epochs=2, score=accuracy, out_dir=tmp_path)
    assert result["epochs_run"] == 2
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (last["scaler"] is not None) == (amp == "fp16")
    assert trainer.predict(valid).dtype == np.float32


def test_a_tied_score_keeps_the_epoch_with_the_lower_validation_loss(tmp_path):
    train, valid = loaders()
    result = build(epochs=4, steps=6).fit(
        train, valid, epochs=4, score=lambda targets, probabilities: 1.0, metric="auc", out_dir=tmp_path
    )
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["auc"].nunique() == 1  # the score never moves
    assert result["best_epoch"] == int(metrics["epoch"][metrics["valid_loss"].idxmin()])


def scripted(values):
    """A score function that returns ``values`` in turn, one per validation."""
    remaining = list(values)
    return lambda targets, probabilities: remaining.pop(0)


def test_oof_is_written_once_for_the_epoch_that_stays_best(tmp_path, monkeypatch):
    writes = []
    real_write = engine.oof.write
    monkeypatch.setattr(engine.oof, "write", lambda *args, **kw: (writes.append(kw["epoch"]), real_write(*args, **kw)))
    train, valid = loaders()
    result = build(epochs=3).fit(train, valid, epochs=3, score=scripted([0.5, 0.7, 0.6]), out_dir=tmp_path)
    assert result["best_epoch"] == 2 and writes == [2]  # epochs 1 and 2 both improved; one write
    assert int(np.load(tmp_path / "oof.npz")["epoch"]) == 2


def test_a_run_resumed_after_its_best_epoch_predicts_the_oof_again_from_best_pt(tmp_path):
    train, valid = loaders()
    build(epochs=3).fit(train, valid, epochs=2, score=scripted([0.5, 0.9]), out_dir=tmp_path)
    (tmp_path / "oof.npz").unlink()  # as after a kill before the end of the run
    trainer = build(epochs=3)
    result = trainer.fit(train, valid, epochs=3, score=scripted([0.1]), out_dir=tmp_path, resume=True)
    assert result["best_epoch"] == 2
    saved = np.load(tmp_path / "oof.npz")
    assert int(saved["epoch"]) == 2
    last = trainer.predict(valid)  # the Engine still holds the last epoch's weights, not best.pt's
    check = build(epochs=3)
    check.load(tmp_path / "best.pt")
    best = check.predict(valid)
    np.testing.assert_allclose(saved["probabilities"].astype(np.float32), best, atol=1e-3)
    assert not np.allclose(last, best, atol=1e-3)
