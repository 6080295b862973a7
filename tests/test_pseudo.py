"""Training data from an earlier run: --soft-targets (OOF probabilities mixed into the labels) and --pseudo
(confident test predictions as extra training rows, never validated on), on a small digits demo."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from compkit import oof, registry
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _build, _pseudo
from tests._cli import FAST, invoke

TRAIN_ROWS, TEST_ROWS = 300, 80



@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A digits demo cut to 300 training and 80 test rows, 3 folds, and run ``a`` trained on all of them."""
    path = tmp_path_factory.mktemp("pseudo")
    env = {"COMPKIT_DATA_DIR": str(path / "d"), "COMPKIT_RUNS_DIR": str(path / "r")}
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    root = path / "d" / "digits"
    for name, rows in (("train.csv", TRAIN_ROWS), ("test.csv", TEST_ROWS)):
        pd.read_csv(root / name).head(rows).to_csv(root / name, index=False)
    assert invoke("folds", "digits", "--n-folds", "3", env=env).exit_code == 0
    result = invoke("train", "digits", "--folds", "all", "--run-name", "a", *FAST, env=env)
    assert result.exit_code == 0, result.output
    return path, env


def spy_training(monkeypatch):
    """Record the loaders fit_fold builds (by stage) and every target the loss gets."""
    seen = {"loaders": {}, "targets": []}
    real_loader, real_engine = _build.loader, _build.make_engine

    def loader(comp, table, root, stage, config, **options):
        made = real_loader(comp, table, root, stage, config, **options)
        seen["loaders"][stage] = (table, made)
        return made

    def make_engine(comp, config, model, loss=None, *args, **kwargs):
        def recording(logits, target):
            seen["targets"].append(target.detach().clone())
            return loss(logits, target)

        return real_engine(comp, config, model, recording if loss is not None else None, *args, **kwargs)

    monkeypatch.setattr(_build, "loader", loader)
    monkeypatch.setattr(_build, "make_engine", make_engine)
    return seen


def oof_by_id(run_dir):
    parts = [oof.load(p) for p in sorted(run_dir.glob("fold*/oof.npz"))]
    ids = np.concatenate([np.asarray(p.ids).astype(str) for p in parts])
    return dict(zip(ids, np.concatenate([p.probabilities() for p in parts])))


def test_soft_targets_are_03_oof_plus_07_label_for_training_rows_and_validation_keeps_labels(work, monkeypatch):
    path, env = work
    runs = path / "r" / "digits"
    seen = spy_training(monkeypatch)
    result = invoke("train", "digits", "--fold", "0", "--run-name", "b", "--soft-targets", "a", "--soft-weight",
                    "0.3", *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert "soft targets: 0.3 x run a's out-of-fold probabilities + 0.7 x the label, for 200 training rows" in result.output
    table, made = seen["loaders"]["train"]
    targets = made.dataset.dataset.targets  # SeededDataset -> the ArrayDataset with the soft targets
    known = oof_by_id(runs / "a")
    p = np.stack([known[i] for i in table["ImageId"].astype(str)])
    p = p / p.sum(axis=1, keepdims=True)
    onehot = np.eye(10, dtype=np.float32)[table["target"].to_numpy()]
    assert targets.shape == (len(table), 10) and targets.dtype == np.float32
    np.testing.assert_allclose(targets, 0.3 * p + 0.7 * onehot, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    assert (targets.max(axis=1) < 1).any()  # really soft: an untrained-ish model spreads its probabilities
    trained = [t for t in seen["targets"] if t.is_floating_point()]
    validated = [t for t in seen["targets"] if not t.is_floating_point()]
    assert trained and all(t.shape[1] == 10 and torch.allclose(t.sum(1), torch.ones(len(t)), atol=1e-5) for t in trained)
    assert validated and all(t.dtype == torch.int64 and t.ndim == 1 for t in validated)  # hard labels
    valid_table, valid = seen["loaders"]["valid"]
    assert np.array_equal(np.asarray(valid.dataset.dataset.targets), valid_table["target"].to_numpy())
    config = json.loads((runs / "b" / "config.json").read_text())
    assert config["soft_targets"] == "a" and config["soft_weight"] == 0.3
    # the recipe changed: another fold of b with another weight is refused
    result = invoke("train", "digits", "--fold", "1", "--run-name", "b", "--soft-weight", "0.5", *FAST, env=env)
    assert result.exit_code == 1 and "soft_weight: 0.3 -> 0.5" in result.output


def test_soft_targets_from_a_run_missing_a_folds_oof_name_that_fold(work):
    path, env = work
    runs = path / "r" / "digits"
    shutil.copytree(runs / "a", runs / "a-cut", symlinks=True)
    (runs / "a-cut" / "fold2" / "oof.npz").unlink()
    (runs / "a-cut" / "fold1" / "fold.json").unlink()  # fold 1 looks unfinished
    result = invoke("train", "digits", "--fold", "0", "--run-name", "cut", "--soft-targets", "a-cut", *FAST, env=env)
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "training row(s) have no out-of-fold prediction in run a-cut" in message
    assert "fold(s) 1, 2 of a-cut have no finished oof.npz (fold(s) 1 did not finish training)" in message
    assert "compkit train digits --fold 1 --run-name a-cut" in message
    assert not (runs / "cut").exists()  # refused before the run folder is made
    result = invoke("train", "digits", "--fold", "0", "--soft-targets", "nope", *FAST, env=env)
    assert result.exit_code == 1 and "there is no run" in result.output and "a-cut" in result.output


def test_pseudo_rows_above_the_threshold_join_training_only(work, monkeypatch):
    path, env = work
    runs, root = path / "r" / "digits", path / "d" / "digits"
    comp = registry.get().competition("digits")
    test = pd.read_csv(root / "test.csv")
    probabilities = _pseudo.test_probabilities(comp, runs / "a", root, comp.test_table(root), "cpu")  # the cache
    top = probabilities.max(axis=1)
    threshold = float(np.sort(top)[len(top) // 2])  # about half the test rows pass
    keep = top >= threshold
    assert 0 < keep.sum() < len(test)
    counts = np.bincount(probabilities.argmax(axis=1)[keep], minlength=10)
    seen = spy_training(monkeypatch)
    result = invoke("train", "digits", "--fold", "0", "--run-name", "c", "--pseudo", "a", "--threshold",
                    repr(threshold), *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert f"test predictions of a's fold(s) 0, 1, 2 from {runs / 'a' / 'test_predictions.npz'}" in result.output
    per_class = ", ".join(f"{c}: {n}" for c, n in enumerate(counts))
    assert (f"pseudo-labels: {keep.sum()} of {len(test)} test rows of run a at top probability >= {threshold:g} "
            f"added to the training rows ({per_class})") in " ".join(result.output.split())
    train_table, made = seen["loaders"]["train"]
    labelled = 200  # fold 0's training rows of 300 in 3 folds
    assert len(made.dataset) == len(train_table) == labelled + keep.sum()
    extra = train_table.iloc[labelled:]
    assert np.array_equal(extra["target"].to_numpy(), probabilities.argmax(axis=1)[keep])
    pixels = [f"pixel{i}" for i in range(784)]
    assert np.array_equal(extra[pixels].to_numpy(), test[pixels].to_numpy()[keep])  # the test images themselves
    # the validation rows and oof.npz are those of the same fold without --pseudo
    assert np.array_equal(oof.load(runs / "c" / "fold0" / "oof.npz").ids, oof.load(runs / "a" / "fold0" / "oof.npz").ids)
    valid_table, _ = seen["loaders"]["valid"]
    assert len(valid_table) == 100 and not set(extra.index) & set(valid_table.index)
    config = json.loads((runs / "c" / "config.json").read_text())
    assert config["pseudo"] == "a" and config["pseudo_threshold"] == threshold


def test_the_test_table_must_read_as_training_rows_and_pseudo_is_for_classification(work, monkeypatch):
    path, _ = work
    root = path / "d" / "digits"
    comp = registry.get().competition("digits")
    config = Config(image_size=28)
    test = comp.test_table(root).head(5)
    rows = test.assign(target=np.arange(5))
    labels = np.array([int(comp.dataset(rows, root, "train", config)[i]["target"]) for i in range(5)])
    assert np.array_equal(labels, np.arange(5))  # digits' dataset reads test rows + target for training
    _pseudo.check_rows(comp, config, root, test, rows)  # passes
    real = type(comp).dataset

    def by_id_in_the_train_table(self, table, root, stage, config):  # as a plugin with a cache of the train table
        if stage == "test":
            return real(self, table, root, stage, config)
        full = self.train_table(root)
        found = full.iloc[pd.Index(full["ImageId"]).get_indexer(table["ImageId"])].reset_index(drop=True)
        return real(self, found.assign(target=table["target"].to_numpy()), root, stage, config)

    monkeypatch.setattr(type(comp), "dataset", by_id_in_the_train_table)
    with pytest.raises(CompkitError, match="test table cannot serve as training rows.*another image"):
        _pseudo.check_rows(comp, config, root, test, rows)
    siim = registry.get().competition("siim")
    with pytest.raises(CompkitError, match="hard pseudo-labels are for classification; siim is segmentation"):
        _pseudo.pseudo_rows(siim, Config(pseudo="a"), path / "r" / "siim" / "a", root, test, device="cpu")
    with pytest.raises(CompkitError, match="siim is segmentation"):
        _pseudo.oof_targets(siim, path / "r" / "siim" / "a", test, np.ones(len(test), bool))


def test_soft_targets_keep_a_pseudo_rows_label_and_mix_dense_targets():
    comp = registry.get().competition("digits")
    p = np.full((3, 10), 0.1, np.float32)
    p[2] = np.nan  # a pseudo row: no out-of-fold prediction
    mixed = _pseudo.soft_targets(comp, np.array([1, 2, 3]), p, 0.3)
    assert np.allclose(mixed[0], 0.03 + 0.7 * np.eye(10)[1]) and np.array_equal(mixed[2], np.eye(10)[3])
    dense = _pseudo.soft_targets(comp, np.eye(10, dtype=np.float32)[[4, 5, 6]], p, 0.5)
    assert np.allclose(dense[1], 0.05 + 0.5 * np.eye(10)[5])
