"""Skewed classes: balanced class weights for the loss and a class-balanced sampler that stays seeded per
epoch (a resume replays it) and sharded under DDP."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from compkit import balance, registry
from compkit.cli import cli
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.loaders import EpochSampler, make_loader
from compkit.pipeline import _build
from tests._cli import fast

FAST = fast(batch_size=32)
SKEWED = np.array([0] * 90 + [1] * 10)  # a 90/10 table


def digits():
    return registry.get().competition("digits")


def test_balanced_weights_are_n_over_k_count_of_the_training_rows():
    comp = SimpleNamespace(task="classification", num_classes=3, classes=("a", "b", "c"), name="abc")
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    weights = balance.class_weights(comp, labels)
    np.testing.assert_allclose(weights, [100 / (3 * 70), 100 / (3 * 20), 100 / (3 * 10)], rtol=1e-6)
    assert weights.dtype == np.float32
    assert np.isclose((weights[labels]).sum(), 100)  # every class carries the same total weight: n / k each
    with pytest.raises(CompkitError, match="class\\(es\\) c of .* are in no training row"):
        balance.class_weights(comp, np.array([0, 1, 1]))
    multilabel = SimpleNamespace(task="multilabel", num_classes=2, classes=("x", "y"), name="m")
    rows = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    np.testing.assert_allclose(balance.class_weights(multilabel, rows), [2 / 2, 3 / 1])  # negatives / positives
    # a dense (one-hot) target counts by its argmax
    dense = np.eye(3, dtype=np.float32)[labels]
    assert np.array_equal(balance.class_labels(SimpleNamespace(task="classification", num_classes=3), dense), labels)


def test_the_weighted_losses_take_the_weights_and_others_are_refused():
    comp = digits()
    weights = torch.arange(1, 11, dtype=torch.float32)
    ce = registry.get().loss("ce", competition=comp, class_weights=weights)
    assert torch.equal(ce.weight, weights)
    logits, target = torch.zeros(2, 10), torch.tensor([0, 9])
    assert torch.isclose(ce(logits, target), torch.log(torch.tensor(10.0)))  # weighted mean of equal losses
    smooth = registry.get().loss("ce-smooth", competition=comp, class_weights=weights)
    assert torch.equal(smooth.weight, weights) and smooth.label_smoothing == 0.1
    multilabel = SimpleNamespace(task="multilabel")
    assert torch.equal(registry.get().loss("bce", competition=multilabel, class_weights=weights).pos_weight, weights)
    assert registry.get().loss("ce", competition=comp).weight is None
    with pytest.raises(CompkitError, match="loss 'focal' takes no class weights"):
        balance.check(comp, Config(loss="focal", class_weights="balanced"))
    with pytest.raises(CompkitError, match="siim is segmentation"):
        balance.check(registry.get().competition("siim"), Config(sampler="balanced"))
    balance.check(comp, Config(class_weights="balanced", sampler="balanced"))  # fine
    with pytest.raises(CompkitError, match="must be one of uniform, balanced"):
        Config(sampler="weighted")


def test_the_balanced_sampler_is_near_uniform_on_a_90_10_table_and_replays_an_epoch():
    weights = balance.sample_weights(SimpleNamespace(num_classes=2), SKEWED)
    counts = np.zeros(2)
    for epoch in range(20):
        sampler = EpochSampler(len(SKEWED), shuffle=True, seed=7, weights=weights)
        sampler.set_epoch(epoch)
        drawn = sampler.indices()
        assert len(drawn) == len(sampler) == len(SKEWED)  # an epoch is as long as the training rows
        counts += np.bincount(SKEWED[drawn], minlength=2)
    assert abs(counts[1] / counts.sum() - 0.5) < 0.05  # the 10 % class is drawn about half the time
    uniform = EpochSampler(len(SKEWED), shuffle=True, seed=7)
    assert np.bincount(SKEWED[uniform.indices()]).tolist() == [90, 10]  # a permutation: the table's skew
    # a resumed run builds a new sampler: the same (seed, epoch) gives the same draws and sample seeds
    first, again = (EpochSampler(100, shuffle=True, seed=7, weights=weights) for _ in range(2))
    first.set_epoch(3)
    again.set_epoch(3)
    assert list(first) == list(again)
    again.set_epoch(4)
    assert not np.array_equal(first.indices(), again.indices())
    pairs = list(first)
    repeated = [seed for index, seed in pairs if index == pairs[0][0]]
    assert len(set(repeated)) == len(repeated)  # a row drawn twice is augmented differently each time
    with pytest.raises(CompkitError, match="sample weights are for training"):
        EpochSampler(100, shuffle=False, seed=7, weights=weights)
    with pytest.raises(CompkitError, match="100 finite non-negative numbers"):
        EpochSampler(100, shuffle=True, seed=7, weights=weights[:50])


def test_the_balanced_sampler_shards_one_epoch_draw_between_processes():
    weights = balance.sample_weights(SimpleNamespace(num_classes=2), SKEWED)
    whole = EpochSampler(100, shuffle=True, seed=5, weights=weights)
    shards = [EpochSampler(100, shuffle=True, seed=5, weights=weights, rank=r, world_size=3) for r in range(3)]
    for sampler in (whole, *shards):
        sampler.set_epoch(2)
    assert [len(s) for s in shards] == [33, 33, 33]  # equal shares, the tail dropped
    woven = np.empty(99, dtype=np.int64)
    for rank, shard in enumerate(shards):
        woven[rank::3] = shard.indices()
    assert np.array_equal(woven, whole.indices()[:99])  # every process cuts the same epoch draw
    seeds = {seed for shard in shards for _, seed in shard}
    assert len(seeds) == 99


def test_a_weighted_training_loader_draws_by_the_weights():
    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(SKEWED)

        def __getitem__(self, index):
            return {"image": torch.zeros(1), "target": torch.tensor(int(SKEWED[index]))}

    weights = balance.sample_weights(SimpleNamespace(num_classes=2), SKEWED)
    loader = make_loader(Rows(), batch_size=10, train=True, num_workers=0, seed=1, weights=weights, device="cpu")
    seen = []
    for epoch in range(5):
        loader.sampler.set_epoch(epoch)
        seen += [batch["target"] for batch in loader]
    seen = torch.cat(seen)
    assert 0.4 < seen.float().mean() < 0.6 and len(seen) == 500


def test_class_balance_through_train_weights_the_loss_samples_and_is_recorded(tmp_path, monkeypatch):
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r")}
    assert CliRunner().invoke(cli, ["download", "digits", "--demo"], env=env).exit_code == 0
    root = tmp_path / "d" / "digits"
    table = pd.read_csv(root / "train.csv")
    # skewed: every 0, a fifth of each other digit, 300 rows at most
    table = pd.concat([table[table.label == 0], table[table.label != 0].iloc[::5]]).head(300)
    table.to_csv(root / "train.csv", index=False)
    assert CliRunner().invoke(cli, ["folds", "digits", "--n-folds", "3"], env=env).exit_code == 0
    seen = {}
    real_loader, real_engine = _build.loader, _build.make_engine

    def loader(comp, rows, root, stage, config, **options):
        made = real_loader(comp, rows, root, stage, config, **options)
        seen[stage] = (rows, made)
        return made

    def make_engine(comp, config, model, loss=None, *args, **kwargs):
        seen.setdefault("loss", loss)
        return real_engine(comp, config, model, loss, *args, **kwargs)

    monkeypatch.setattr(_build, "loader", loader)
    monkeypatch.setattr(_build, "make_engine", make_engine)
    result = CliRunner().invoke(cli, ["train", "digits", "--fold", "0", "--run-name", "b", "--set",
                                      "class_weights=balanced", "--set", "sampler=balanced", *FAST], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows, made = seen["train"]
    counts = np.bincount(rows["target"], minlength=10)
    assert counts[0] > 3 * counts[1:].max()  # the table is skewed
    np.testing.assert_allclose(seen["loss"].weight.numpy(), len(rows) / (10 * counts), rtol=1e-5)
    probabilities = made.sampler.weights  # normalised
    np.testing.assert_allclose(probabilities, (1 / counts[rows["target"]]) / (1 / counts[rows["target"]]).sum())
    drawn = np.bincount(rows["target"].to_numpy()[made.sampler.indices()], minlength=10)
    assert drawn[0] < 2 * drawn[1:].mean()  # the 0s no longer dominate an epoch
    assert "training rows per class: 0: " in result.output and "(weight " in result.output
    config = json.loads((tmp_path / "r" / "digits" / "b" / "config.json").read_text())
    assert config["class_weights"] == "balanced" and config["sampler"] == "balanced"
    result = CliRunner().invoke(cli, ["train", "digits", "--fold", "1", "--run-name", "b", "--set",
                                      "sampler=uniform", *FAST], env=env)
    assert result.exit_code == 1 and "sampler: 'balanced' -> 'uniform'" in result.output
