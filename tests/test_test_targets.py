"""A labelled test set (``Competition.test_targets``): submit scores it, prints the score and the confusion
matrix and records ``test_score`` in the sidecar; a competition with no slug refuses ``--upload``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compkit import pipeline, registry
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _predict, submitting
from tests._cli import FAST, invoke, places_env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("held-out")
    env = places_env(tmp_path)
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    result = invoke("train", "digits", "--fold", "0", "--run-name", "r1", "--set", "n_folds=3", *FAST, env=env)
    assert result.exit_code == 0, result.output
    return tmp_path, env


def _sidecar(tmp_path, output):
    written = next(line.split()[-1] for line in output.splitlines() if line.startswith("wrote "))
    return json.loads((tmp_path / "s" / "digits" / written.rsplit("/", 1)[-1]).with_suffix(".json").read_text())


def test_submit_scores_a_labelled_test_set_as_the_competition_does(trained, monkeypatch):
    tmp_path, env = trained
    comp = registry.get().competition("digits")
    root = tmp_path / "d" / "digits"
    test_table = pipeline.table(comp, root, "test")
    targets = np.random.default_rng(0).integers(0, comp.num_classes, len(test_table))
    monkeypatch.setattr(comp, "test_targets", lambda root: targets)
    result = invoke("submit", "digits", "--run", "r1", "--device", "cpu", "--batch-size", "50", env=env)
    assert result.exit_code == 0, result.output

    run_dir = tmp_path / "r" / "digits" / "r1"
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    probabilities = _predict.predict(comp, config, root, run_dir, ["fold0"], test_table, config.tta, "cpu", 50)
    expected = comp.score(targets, probabilities)
    sidecar = _sidecar(tmp_path, result.output)
    assert sidecar["test_score"] == pytest.approx(expected, abs=1e-9)
    assert f"test accuracy {expected:.5f} on the held-out split ({len(test_table)} samples)" in result.output
    assert "confusion matrix (rows: true class, columns: predicted class):" in result.output
    matrix_header = result.output.split("columns: predicted class):\n", 1)[1].splitlines()[0]
    assert matrix_header.split() == [str(name) for name in comp.classes]


def test_an_unlabelled_test_set_records_no_test_score(trained):
    tmp_path, env = trained
    result = invoke("submit", "digits", "--run", "r1", "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    assert _sidecar(tmp_path, result.output)["test_score"] is None
    assert "held-out split" not in result.output


def test_targets_of_the_wrong_length_are_refused(trained, monkeypatch):
    tmp_path, _ = trained
    comp = registry.get().competition("digits")
    monkeypatch.setattr(comp, "test_targets", lambda root: np.zeros(3, np.int64))
    with pytest.raises(CompkitError, match="test_targets has 3 rows"):
        submitting.HeldOutScore.for_test(comp, tmp_path, pipeline.table(comp, tmp_path / "d" / "digits", "test"))


class Masks(Competition):
    name, task, metric = "masks", "segmentation", "dice"


def test_maps_are_scored_image_by_image_without_keeping_them():
    rng = np.random.default_rng(1)
    targets = (rng.random((7, 8, 8)) > 0.6).astype(np.float32)
    probabilities = rng.random((7, 8, 8)).astype(np.float32)
    held_out = submitting.HeldOutScore(Masks(), targets)
    held_out.add(probabilities[:4], 0)
    held_out.add(probabilities[4:], 4)
    assert all(part.ndim == 1 for part in held_out.parts)  # one score per image, no maps kept
    assert held_out.score() == pytest.approx(Masks().score(targets, probabilities))


class Dataset(Competition):
    name, kaggle, kaggle_dataset = "xrays", None, "someone/chest-xrays"


class Offline(Competition):
    name, kaggle = "offline", None


def test_upload_without_a_competition_says_there_is_none_and_names_the_dataset(tmp_path):
    with pytest.raises(CompkitError, match="no competition to submit to") as error:
        submitting._check_upload(Dataset(), tmp_path)
    assert "Kaggle dataset someone/chest-xrays" in str(error.value)
    with pytest.raises(CompkitError, match="offline is not a Kaggle competition; there is nowhere to upload"):
        submitting._check_upload(Offline(), tmp_path)


def test_the_defaults_have_no_test_targets_and_no_report(tmp_path):
    assert Offline().test_targets(tmp_path) is None
    assert Offline().report(np.zeros(2, np.int64), np.full((2, 2), 0.5)) is None
