"""Folds: stratified, multi-label, grouped, deterministic, never silently overwritten."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compkit import folds
from compkit.errors import CompkitError


def table(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(n)],
        "target": rng.choice(3, n, p=[0.6, 0.3, 0.1]),
        "a": rng.integers(0, 2, n), "b": rng.integers(0, 2, n),
        "patient": rng.integers(0, n // 4, n),
    })


@settings(max_examples=20, deadline=None)
@given(n_folds=st.integers(2, 6), seed=st.integers(0, 1000))
def test_stratified_folds_cover_every_row_once_and_keep_class_ratios(n_folds, seed):
    data = table()
    split = folds.split(data, id_column="id", n_folds=n_folds, seed=seed, stratify="target")
    assert list(split["id"]) == list(data["id"])
    assert sorted(split["fold"].unique()) == list(range(n_folds))
    for label in range(3):
        counts = split["fold"][data["target"] == label].value_counts()
        assert counts.max() - counts.min() <= 1  # stratification: each class spread evenly


def test_groups_never_straddle_folds():
    data = table()
    split = folds.split(data, id_column="id", n_folds=4, seed=1, stratify="target", group="patient")
    assert (split.groupby(data["patient"])["fold"].nunique() == 1).all()
    split = folds.split(data, id_column="id", n_folds=4, seed=1, group="patient")
    assert (split.groupby(data["patient"])["fold"].nunique() == 1).all()


def test_multilabel_stratification_balances_each_label():
    data = table(200)
    split = folds.split(data, id_column="id", n_folds=5, seed=0, stratify=("a", "b"))
    for column in ("a", "b"):
        positives = split["fold"][data[column] == 1].value_counts()
        assert positives.max() - positives.min() <= 2


def test_same_seed_same_split_other_seed_other_split():
    data = table()
    one = folds.split(data, id_column="id", n_folds=5, seed=3, stratify="target")
    assert one.equals(folds.split(data, id_column="id", n_folds=5, seed=3, stratify="target"))
    assert not one.equals(folds.split(data, id_column="id", n_folds=5, seed=4, stratify="target"))


def test_write_refuses_a_different_split_without_force(tmp_path):
    data = table()
    first = folds.split(data, id_column="id", n_folds=5, seed=0, stratify="target")
    assert folds.write(tmp_path, first) is True
    assert folds.write(tmp_path, first) is False  # identical: nothing to do
    other = folds.split(data, id_column="id", n_folds=3, seed=0, stratify="target")
    with pytest.raises(CompkitError, match="different split.*--force"):
        folds.write(tmp_path, other)
    assert folds.read(tmp_path).equals(first)  # untouched
    assert folds.write(tmp_path, other, force=True) is True
    assert folds.read(tmp_path)["fold"].max() == 2


def test_bad_requests_are_clear_errors():
    data = table(10)
    with pytest.raises(CompkitError, match=r"no column\(s\) nope, which the Competition setting stratify = 'nope' "
                                           r"names; set stratify to one of its columns \(id, .*\) or to None"):
        folds.split(data, id_column="id", n_folds=2, seed=0, stratify="nope")
    with pytest.raises(CompkitError, match=r"setting group = 'site' names"):
        folds.split(data, id_column="id", n_folds=2, seed=0, group="site")
    with pytest.raises(CompkitError, match="cannot make 20 folds"):
        folds.split(data, id_column="id", n_folds=20, seed=0)
    with pytest.raises(CompkitError, match="duplicate ids"):
        folds.split(pd.concat([data, data]), id_column="id", n_folds=2, seed=0)


def test_assignments_detect_ids_missing_from_folds():
    data = table(20)
    split = folds.split(data, id_column="id", n_folds=2, seed=0)
    assert (folds.assignments(data, split, "id") == split["fold"].to_numpy()).all()
    with pytest.raises(CompkitError, match="not in folds.csv"):
        folds.assignments(data, split.iloc[1:], "id")
