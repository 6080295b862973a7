"""A split the competition provides (an official train/val list) beside k-fold, and a variant reading its
parent's data folder with a split file of its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from compkit import folds, hookimpl, registry
from compkit.errors import CompkitError
from compkit_digits import Digits
from tests._cli import fast, invoke, places_env

OFFICIAL, VARIANT = "digits-official", "digits-variant"
ROWS = 150


class Official(Digits):
    """Digits with a fixed split: the last 50 training rows are the official validation set."""

    name = OFFICIAL

    def fixed_split(self, table, root):
        return np.where(np.arange(len(table)) >= len(table) - 50, 0, -1)


class Variant(Digits):
    """Another recipe on digits' own data folder."""

    name = VARIANT
    data_name = "digits"


class Plugin:
    @hookimpl
    def register_competitions(self, register):
        register(Official())
        register(Variant())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    manager = registry.get().manager
    manager.add("split-test", Plugin(), "compkit-split-test", "0")
    registry.get.cache_clear()
    base = tmp_path_factory.mktemp("split")
    env = {**places_env(base), "BASE": str(base)}
    for name in (OFFICIAL, "digits"):
        assert invoke("download", name, "--demo", env=env).exit_code == 0
        root = base / "d" / name
        for file, rows in (("train.csv", ROWS), ("test.csv", 16), ("sample_submission.csv", 16)):
            pd.read_csv(root / file).head(rows).to_csv(root / file, index=False)
    yield env
    manager.pm.unregister(name="split-test")
    manager.plugins.pop("split-test")
    registry.get.cache_clear()


def test_a_fixed_split_is_checked():
    table = pd.DataFrame({"id": [1, 2, 3, 4]})
    assert folds.fixed(table, [-1, -1, 0, 0], id_column="id", what="x")["fold"].tolist() == [-1, -1, 0, 0]
    for bad, message in (([0, 0, 1], "3 folds for 4"), ([-1, -1, 1, 1], "0..K-1"), ([0, 0, 0, 0], "trains on none"),
                         ([0.0, 1.0, 0.0, 0.0], "integer"), ([-2, 0, 0, 0], "0..K-1")):
        with pytest.raises(CompkitError, match=message):
            folds.fixed(table, bad, id_column="id", what="x")


def test_folds_writes_the_competitions_own_split_and_training_validates_only_its_rows(env):
    result = invoke("folds", OFFICIAL, "--n-folds", "5", env=env)
    assert result.exit_code == 0 and "the competition's own split, so --n-folds is not used" in result.output
    assert "train only: 100" in result.output and "0: 50" in result.output
    root = Path(env["BASE"]) / "d" / OFFICIAL
    assert folds.read(root)["fold"].tolist() == [-1] * 100 + [0] * 50
    result = invoke("train", OFFICIAL, "--fold", "0", "--run-name", "r", *fast(), env=env)
    assert result.exit_code == 0, result.output
    fold_dir = Path(env["BASE"]) / "r" / OFFICIAL / "r" / "fold0"
    with np.load(fold_dir / "oof.npz") as stored:
        assert stored["ids"].tolist() == [str(i) for i in range(101, 151)]  # the official validation rows
    assert json.loads((fold_dir.parent / "config.json").read_text())["n_folds"] == 1
    result = invoke("train", OFFICIAL, "--fold", "1", "--run-name", "r", *fast(), env=env)
    assert result.exit_code != 0 and "folds 0..0" in result.output


def test_a_variant_reads_its_parents_data_with_its_own_split_file(env):
    result = invoke("folds", VARIANT, "--n-folds", "3", env=env)
    assert result.exit_code == 0, result.output
    root = Path(env["BASE"]) / "d" / "digits"
    assert (root / f"folds-{VARIANT}.csv").is_file() and not (root / "folds.csv").is_file()
    assert not (Path(env["BASE"]) / "d" / VARIANT).exists()
    assert folds.count(folds.read(root, f"folds-{VARIANT}.csv")) == 3
    result = invoke("train", VARIANT, "--fold", "2", "--run-name", "v", *fast(), env=env)
    assert result.exit_code == 0, result.output
    assert (Path(env["BASE"]) / "r" / VARIANT / "v" / "fold2" / "best.pt").is_file()
