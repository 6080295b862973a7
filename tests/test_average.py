"""Checkpoint averaging: keep_top keeps the k best epochs' weights during fit (and across a resume);
compkit average averages them, recomputes BatchNorm, scores the average and keeps it only when better."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from compkit import averaging, engine, folds, registry
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _build
from tests._cli import fast, invoke
from tests.test_engine import build, loaders, scripted

EPOCHS = 4
KEEP = 3
FAST = fast(EPOCHS) + ["--set", f"keep_top={KEEP}"]
LINE = re.compile(
    r"fold (\d+): average of epochs ([\d, ]+): accuracy ([\d.]+) against best epoch (\d+)'s ([\d.]+)"
)


def kept_epochs(fold_dir):
    return sorted(int(path.stem[5:]) for path in (fold_dir / "top").glob("epoch*.pt"))


def weights(path, key="model"):
    return torch.load(path, weights_only=True)[key]


# -- keep_top in the Engine -------------------------------------------------------------------------------


def test_keep_top_keeps_the_k_best_epochs_and_a_resume_carries_on_from_the_files(tmp_path):
    scores = [0.5, 0.9, 0.6, 0.7, 0.8]  # best: epochs 2 and 5
    train, valid = loaders()
    whole = tmp_path / "whole"
    build(epochs=5, keep_top=2).fit(train, valid, epochs=5, score=scripted(scores), out_dir=whole)
    assert kept_epochs(whole) == [2, 5]
    assert torch.load(whole / "top" / "epoch002.pt", weights_only=True)["epoch"] == 2
    best = weights(whole / "best.pt")
    assert all(torch.equal(best[k], v) for k, v in weights(whole / "top" / "epoch002.pt").items())
    assert "optimizer" not in torch.load(whole / "top" / "epoch005.pt", weights_only=True)  # weights only

    cut = tmp_path / "cut"
    build(epochs=5, keep_top=2).fit(train, valid, epochs=3, score=scripted(scores[:3]), out_dir=cut)
    assert kept_epochs(cut) == [2, 3]
    torch.save({"model": {}}, cut / "top" / "epoch004.pt")  # left by a killed epoch 4
    build(epochs=5, keep_top=2).fit(
        train, valid, epochs=5, score=scripted(scores[3:]), out_dir=cut, resume=True
    )
    assert kept_epochs(cut) == [2, 5]
    for name in ("epoch002.pt", "epoch005.pt"):  # the resumed run keeps what the uninterrupted one does
        a, b = weights(whole / "top" / name), weights(cut / "top" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_top_epochs_rank_as_best_pt_is_chosen():
    rows = [
        {"epoch": 1, "train_loss": 0.9, "valid_loss": 0.5, "auc": 0.8},
        {"epoch": 2, "train_loss": 0.7, "valid_loss": 0.4, "auc": 0.9},
        {"epoch": 3, "train_loss": 0.5, "valid_loss": 0.3, "auc": 0.9},  # a tie: the lower valid loss first
        {"epoch": 4, "train_loss": 0.4, "valid_loss": math.nan, "auc": math.nan},  # never counts by metric
        {"epoch": 5, "train_loss": 0.6, "valid_loss": 0.6, "auc": 0.7},
    ]
    assert engine.top_epochs(rows, "auc", True, "metric", 3) == [3, 2, 1]
    assert engine.top_epochs(rows, "auc", False, "metric", 2) == [5, 1]
    assert engine.top_epochs(rows, "auc", True, "train_loss", 2) == [4, 3]
    assert engine.top_epochs(rows, "auc", True, "last", 2) == [5, 4]


def test_average_state_dicts_means_floats_and_takes_integers_from_the_best():
    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)},
        {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)},
    ]
    averaged = averaging.average_state_dicts(states)
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0])) and int(averaged["n"]) == 7
    with pytest.raises(CompkitError, match="not the same model"):
        averaging.average_state_dicts([states[0], {"w": torch.zeros(3), "n": torch.tensor(1)}])


def test_keep_top_is_a_checked_config_key():
    assert Config(keep_top=3).keep_top == 3
    with pytest.raises(CompkitError, match="keep_top"):
        Config(keep_top=-1)


# -- compkit average on the digits demo --------------------------------------------------------------------



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits run "r" whose fold 0 trained EPOCHS epochs keeping the KEEP best."""
    base = tmp_path_factory.mktemp("average")
    env = {"COMPKIT_DATA_DIR": str(base / "d"), "COMPKIT_RUNS_DIR": str(base / "r")}
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    result = invoke("train", "digits", "--fold", "0", "--run-name", "r", *FAST, env=env)
    assert result.exit_code == 0, result.output
    return base, env


def copy_run(trained, name):
    base, env = trained
    shutil.copytree(base / "r" / "digits" / "r", base / "r" / "digits" / name)
    return base / "r" / "digits" / name / "fold0", env


def validation_rows(base, run_dir):
    comp = registry.get().competition("digits")
    table = comp.train_table(base / "d" / "digits")
    assignment = folds.assignments(table, folds.read(run_dir), comp.id_column)
    return comp, table[assignment == 0].reset_index(drop=True)


def predict_valid(base, fold_dir, checkpoint):
    """Probabilities of ``checkpoint`` on fold 0's validation rows, through a fresh Engine."""
    comp, valid = validation_rows(base, fold_dir.parent)
    config = Config.from_dict(json.loads((fold_dir.parent / "config.json").read_text()))
    model = registry.get().model(config.model, comp.num_classes, comp.in_channels, pretrained=False)
    trainer = _build.make_engine(comp, config, model, device="cpu", quiet=True)
    trainer.load(checkpoint)
    loader = _build.loader(comp, valid, base / "d" / "digits", "valid", config)
    return trainer.predict(loader), valid["target"].to_numpy()


@pytest.mark.slow
def test_keep_top_keeps_the_best_epochs_of_metrics_csv(trained):
    base, _ = trained
    fold_dir = base / "r" / "digits" / "r" / "fold0"
    metrics = pd.read_csv(fold_dir / "metrics.csv")
    assert len(metrics) == EPOCHS
    best = metrics.sort_values(["accuracy", "valid_loss", "epoch"], ascending=[False, True, True])["epoch"]
    assert kept_epochs(fold_dir) == sorted(best.head(KEEP).tolist())


@pytest.mark.slow
def test_the_average_is_the_mean_of_the_kept_weights_and_scores_what_it_prints(trained):
    fold_dir, env = copy_run(trained, "mean")
    before = (fold_dir / "best.pt").read_bytes()
    result = invoke("average", "digits", "--run", "mean", "--fold", "0", "--top", str(KEEP), env=env)
    assert result.exit_code == 0, result.output
    (match,) = LINE.findall(result.output)
    fold, epochs, printed, best_epoch, best_score = match
    assert fold == "0" and [int(e) for e in epochs.split(", ")] == kept_epochs(fold_dir)
    record = json.loads((fold_dir / "fold.json").read_text())
    assert int(best_epoch) == record["best_epoch"] and best_score == f"{record['best_score']:.5f}"

    averaged = weights(fold_dir / "averaged.pt")
    kept = [weights(path) for path in sorted((fold_dir / "top").glob("epoch*.pt"))]
    floats = [k for k, v in averaged.items() if v.is_floating_point() and "running_" not in k]
    assert any("conv" in k for k in floats)
    for key in floats:  # BatchNorm's running statistics were recomputed; every weight is the mean
        torch.testing.assert_close(averaged[key], torch.stack([state[key] for state in kept]).mean(0))
    assert any(not torch.equal(averaged[k], kept[0][k]) for k in averaged if "running_mean" in k)

    probabilities, targets = predict_valid(trained[0], fold_dir, fold_dir / "averaged.pt")
    assert f"{float((probabilities.argmax(1) == targets).mean()):.5f}" == printed
    assert (fold_dir / "best.pt").read_bytes() == before and not (fold_dir / "best_epoch.pt").exists()
    assert "best.pt unchanged" in result.output
    assert record["average"]["epochs"] == kept_epochs(fold_dir) and record["average"]["kept"] is False


@pytest.mark.slow
def test_keep_if_better_replaces_best_pt_only_when_the_average_scores_better(trained, monkeypatch):
    comp = registry.get().competition("digits")
    # The average's score decides; the epoch's score comes from training. Scripted, both ways are certain.
    worse, env = copy_run(trained, "worse")
    before = (worse / "best.pt").read_bytes()
    monkeypatch.setattr(comp, "score", lambda targets, probabilities: -1.0)
    result = invoke("average", "digits", "--run", "worse", "--keep-if-better", env=env)
    assert result.exit_code == 0, result.output
    assert "best.pt stays" in result.output
    assert (worse / "best.pt").read_bytes() == before and not (worse / "best_epoch.pt").exists()

    better, env = copy_run(trained, "better")
    before, oof_before = (better / "best.pt").read_bytes(), (better / "oof.npz").read_bytes()
    monkeypatch.setattr(comp, "score", lambda targets, probabilities: 2.0)
    result = invoke("average", "digits", "--run", "better", "--keep-if-better", env=env)
    assert result.exit_code == 0, result.output
    assert "kept as best.pt" in result.output
    assert (better / "best_epoch.pt").read_bytes() == before and (
        better / "oof_epoch.npz"
    ).read_bytes() == oof_before
    new_best, averaged = weights(better / "best.pt"), weights(better / "averaged.pt")
    assert all(torch.equal(new_best[k], averaged[k]) for k in averaged)
    monkeypatch.undo()
    probabilities, targets = predict_valid(trained[0], better, better / "averaged.pt")
    stored = np.load(better / "oof.npz")
    np.testing.assert_allclose(stored["probabilities"].astype(np.float32), probabilities, atol=2e-3)
    assert np.array_equal(stored["targets"], targets)
    record = json.loads((better / "fold.json").read_text())
    assert record["best_score"] == 2.0 and record["average"]["kept"] is True


@pytest.mark.slow
def test_fewer_than_two_kept_epochs_is_refused_with_what_to_do(trained):
    fold_dir, env = copy_run(trained, "one")
    for path in sorted((fold_dir / "top").glob("epoch*.pt"))[1:]:
        path.unlink()
    result = invoke("average", "digits", "--run", "one", "--fold", "0", env=env)
    assert result.exit_code == 1
    assert "holds 1 epoch checkpoint(s); an average needs at least 2" in result.output
    assert "--set keep_top=K" in result.output
    shutil.rmtree(fold_dir / "top")
    result = invoke("average", "digits", "--run", "one", "--fold", "all", env=env)
    assert result.exit_code == 1 and "holds 0 epoch checkpoint(s)" in result.output
    result = invoke("average", "digits", "--run", "one", "--top", "1", env=env)
    assert result.exit_code == 2 and "--top" in result.output
