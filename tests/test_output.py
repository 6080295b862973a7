"""What fit prints and draws: the line per epoch, the best line, the bars, curves.png."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn
from tqdm import tqdm

from compkit import console, engine
from compkit.errors import CompkitError
from tests.test_engine import accuracy, build, loaders


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the Engine shows its progress bars."""

    def isatty(self) -> bool:
        return True


def test_quiet_still_prints_each_epoch_and_the_best_one(capsys, monkeypatch):
    monkeypatch.setattr(console, "_NOTED", set())
    scores = iter([0.5, 0.7, 0.6])
    train, valid = loaders()
    trainer = build(epochs=3, amp="bf16")  # quiet=True; bf16 on the CPU would print a note
    trainer.fit(train, valid, epochs=3, score=lambda t, p: next(scores), metric="auc")
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines[:3]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert ["auc 0.50000 new best" in lines[0], "auc 0.70000 new best" in lines[1], "new best" in lines[2]] == [
        True, True, False
    ]
    assert " eta " in lines[0] and " eta " in lines[1] and " eta " not in lines[2]  # none left after the last
    assert lines[3].startswith("best: epoch 2, auc 0.70000 (valid loss ") and len(lines) == 4
    assert err == ""  # no bars, no notes


def test_the_bar_names_the_epoch_and_shows_loss_and_speed_without_a_read_per_batch(monkeypatch):
    bars, reads = [], []

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.description, self.postfixes = kwargs["desc"], []  # a disabled bar keeps no desc
            bars.append(self)

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            self.postfixes.append(dict(ordered_dict))

    real_check = engine.Engine._check_losses

    def check(self, losses, epoch, last_index, batches):
        reads.append((epoch, last_index))
        real_check(self, losses, epoch, last_index, batches)

    monkeypatch.setattr(engine, "tqdm", Recording)
    monkeypatch.setattr(engine.Engine, "_check_losses", check)
    train, valid = loaders()  # 6 batches: read back at the half and at the end
    build(epochs=2).fit(train, valid, epochs=2, score=accuracy)
    assert reads == [(1, 2), (1, 5), (2, 2), (2, 5)]
    epoch_bars = [bar for bar in bars if bar.description.startswith("epoch")]
    assert [bar.description for bar in epoch_bars] == ["epoch 1/2", "epoch 2/2"]
    assert all(len(bar.postfixes) == 2 and set(bar.postfixes[-1]) == {"loss", "img/s"} for bar in epoch_bars)

    reads.clear()
    train, valid = loaders(train_size=4 * 45)  # 45 batches: every SYNC_EVERY, and the last
    build(epochs=1, steps=45).fit(train, valid, epochs=1, score=accuracy)
    assert reads == [(1, 19), (1, 39), (1, 44)]


def test_an_early_read_of_the_losses_leaves_the_epoch_mean_as_one_read_gives_it():
    losses = [torch.tensor(value) for value in (0.1, 0.7, float("nan"), 1.3, 0.2, 0.9)]

    def window_mean(early: int) -> float:
        window = engine._LossWindow()
        for index, loss in enumerate(losses):
            window.add(loss, 4)
            if index + 1 == early:
                _, mean = window.read(commit=False)
                assert mean == pytest.approx((0.1 + 0.7) / 2)  # the NaN batch stays out of the mean
        window.read()
        return window.total / window.count

    assert window_mean(early=3) == window_mean(early=0)  # exactly: the same float sums, in the same groups


def test_a_note_goes_above_an_active_bar_and_ctrl_c_clears_the_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(console, "_NOTED", set())
    train, valid = loaders()
    trainer = build()
    trainer.quiet = False
    with trainer._progress(train, "epoch 1/2") as progress:
        for index, _ in enumerate(progress):
            if index == 2:
                trainer._note("something worth knowing")
    before, after = terminal.getvalue().split("note: something worth knowing\n")
    assert before.endswith("\r") and "epoch 1/2" in before  # the bar was cleared first, then drawn again
    assert "epoch 1/2" in after

    calls = {"count": 0}

    def interrupted(logits, target):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(logits, target)

    trainer = build(loss=interrupted)
    trainer.quiet = False
    with pytest.raises(CompkitError, match="interrupted in epoch 1"):
        trainer.fit(train, valid, epochs=2, score=accuracy)
    assert not tqdm._instances  # closed, so the message that follows starts on a clean line
    assert terminal.getvalue().endswith("\r")


def test_summary_line_and_durations():
    history = [{"epoch": 1, "train_loss": 0.5, "valid_loss": 0.25, "auc": 0.9, "lr": 1e-3,
                "seconds": 30.0, "images_per_second": 1234.0}]
    line = engine._summary_line(history[0], 4, "auc", True, False, history)
    assert line == ("epoch 1/4  train_loss 0.5000  valid_loss 0.2500  auc 0.90000 new best  lr 1.00e-03  "
                    "1,234 img/s  30.0s  eta 1m30s")
    assert engine._summary_line(history[0], 4, "auc", False, True, history).endswith("30.0s  (early stop)")
    assert [engine._duration(s) for s in (0.2, 42, 59.5, 3725)] == ["1s", "42s", "1m00s", "1h02m"]


def rows(valid_losses: list[float]) -> list[dict]:
    return [{"epoch": epoch, "train_loss": 1.0, "valid_loss": loss, "accuracy": 0.5 + epoch / 10,
             "lr": 1e-3 / epoch} for epoch, loss in enumerate(valid_losses, 1)]


def test_curves_show_the_best_epoch_the_learning_rate_and_a_log_axis_for_a_spike():
    figure = engine._curves_figure(rows([1.0, 30.0, 0.8]), "accuracy", 3, "digits, run one, fold 0")
    losses, scores, rates = figure.axes
    assert [axes.get_title() for axes in figure.axes] == ["loss", "valid accuracy", "learning rate"]
    assert figure.get_suptitle() == "digits, run one, fold 0"
    assert losses.get_yscale() == "log"
    assert [line.get_label() for line in scores.get_lines() if line.get_label().startswith("best")] == [
        "best: epoch 3, 0.80000"
    ]
    assert list(rates.get_lines()[0].get_ydata()) == [1e-3, 5e-4, 1e-3 / 3]
    assert engine._curves_figure(rows([1.0, 0.9, 0.8]), "accuracy", 3).axes[0].get_yscale() == "linear"


def test_the_curves_title_comes_from_the_run_folder(tmp_path):
    assert engine._curves_title(Path("runs/digits/one/fold2")) == "digits, run one, fold 2"
    assert engine._curves_title(tmp_path / "anything") == "anything"
    out_dir = tmp_path / "runs" / "digits" / "one" / "fold0"
    train, valid = loaders()
    build(epochs=1).fit(train, valid, epochs=1, score=accuracy, out_dir=out_dir)
    assert (out_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
