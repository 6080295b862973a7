"""The covid-cxr plugin: the shared contract, both folder layouts, the held-out split, errors, a demo run."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tomllib

from compkit import console
from compkit.errors import CompkitError
from compkit.pipeline import submitting
from compkit.testing import CompetitionContract, demo_fixtures, end_to_end

NAME = "covid-cxr"


class TestCovidCxr(CompetitionContract):
    name = NAME
    module = "compkit_covid_cxr"


competition, root = demo_fixtures(NAME)


def _older(tmp_path):
    from compkit_covid_cxr.demo import write_demo

    write_demo(tmp_path, 0, layout="older")
    return tmp_path


def test_current_layout_reads_images_not_masks(competition, root):
    table = pd.concat([competition.train_table(root), competition.test_table(root)])
    assert table["label"].value_counts().to_dict() == {label: 40 for label in competition.classes}
    assert table["path"].str.contains("/images/").all() and not table["path"].str.contains("/masks/").any()
    assert table["id"].is_unique and "COVID/COVID-1" in set(table["id"])
    assert (table["target"] == table["label"].map(competition.classes.index)).all()
    assert all((root / path).is_file() for path in table["path"])


def test_older_layout_maps_its_folder_names_to_the_classes(competition, tmp_path):
    root = _older(tmp_path)
    table = pd.concat([competition.train_table(root), competition.test_table(root)])
    assert table["label"].value_counts().to_dict() == {"COVID": 40, "Normal": 40, "Viral Pneumonia": 40}
    normal = table[table["label"] == "Normal"]
    assert (normal["target"] == 2).all() and normal["path"].str.startswith("COVID-19 Radiography Database/NORMAL/").all()
    (root / "COVID-19 Radiography Database" / "COVID").rename(root / "COVID-19 Radiography Database" / "COVID-19")
    (root / "split.csv").unlink()
    assert set(competition.train_table(root)["label"]) == {"COVID", "Normal", "Viral Pneumonia"}


def test_held_out_split_is_stratified_disjoint_and_recorded(competition, root):
    train, test = competition.train_table(root), competition.test_table(root)
    assert test["label"].value_counts().to_dict() == {label: 6 for label in competition.classes}  # 15 % of 40
    assert not set(train["id"]) & set(test["id"]) and len(train) + len(test) == 160
    split = pd.read_csv(root / "split.csv", dtype=str)
    assert sorted(split.loc[split["split"] == "test", "id"]) == sorted(test["id"])
    np.testing.assert_array_equal(competition.test_targets(root), test["target"].to_numpy())


def test_the_split_is_drawn_the_same_and_never_redrawn(competition, root, tmp_path):
    from compkit_covid_cxr.demo import write_demo

    write_demo(tmp_path, 0)  # the same images, no split.csv yet: drawn at table time, identically
    assert competition.test_table(tmp_path)["id"].tolist() == competition.test_table(root)["id"].tolist()
    extra = tmp_path / "COVID-19_Radiography_Dataset" / "Normal" / "images" / "Normal-999.png"
    shutil.copy(extra.with_name("Normal-1.png"), extra)
    with pytest.raises(CompkitError, match="split.csv was drawn for other images .1 images not in it"):
        competition.train_table(tmp_path)


def test_errors_name_the_folder_and_what_was_expected(competition, tmp_path):
    with pytest.raises(CompkitError, match="COVID-19_Radiography_Dataset/<class>/images/.*compkit download covid-cxr"):
        competition.train_table(tmp_path)
    root = _older(tmp_path)
    top = root / "COVID-19 Radiography Database"
    (top / "Tuberculosis").mkdir()
    with pytest.raises(CompkitError, match="Tuberculosis: not a class folder.*expected one of COVID, Lung_Opacity"):
        competition.train_table(root)
    (top / "Tuberculosis").rmdir()
    for image in (top / "COVID").iterdir():
        image.unlink()
    with pytest.raises(CompkitError, match="COVID holds no images; expected COVID/images/"):
        competition.train_table(root)


def test_two_versions_side_by_side_are_refused(competition, root, tmp_path):
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    _older(tmp_path)
    with pytest.raises(CompkitError, match="two versions of the database"):
        competition.train_table(tmp_path)


def test_download_fetches_the_dataset_through_the_client_and_draws_the_split(competition, tmp_path, monkeypatch):
    from compkit import kaggle
    from compkit_covid_cxr import DATASET
    from compkit_covid_cxr.demo import write_demo

    calls = []

    def dataset(ref, root, version=None, force=False):
        calls.append(ref)
        write_demo(root, 1)  # what the dataset's archive unpacks to
        return root

    monkeypatch.setattr(kaggle, "dataset", dataset)
    competition.download(tmp_path)
    assert calls == [DATASET] == ["tawsifurrahman/covid19-radiography-database"]
    assert (tmp_path / "split.csv").is_file() and len(competition.test_table(tmp_path)) == 24


def test_upload_says_there_is_no_competition_and_names_the_dataset(competition, root):
    with pytest.raises(CompkitError, match="Kaggle dataset tawsifurrahman/covid19-radiography-database, and a "
                                           "dataset has no competition to submit to"):
        submitting._check_upload(competition, root)


def test_report_is_the_accuracy_and_the_confusion_matrix(competition):
    targets = np.array([0, 1, 2, 3, 3])
    probabilities = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    lines = competition.report(targets, probabilities).splitlines()
    assert lines[0] == "out-of-fold accuracy 0.80000 on 5 images"
    assert lines[2].split() == ["COVID", "Lung_Opacity", "Normal", "Viral", "Pneumonia"]
    assert lines[-1].split() == ["Viral", "Pneumonia", "1", "0", "0", "1"]


def test_defaults_are_the_sources_recipe_and_the_demo_recipe_is_small(competition):
    config = competition.defaults
    assert (config.model, config.pretrained, config.loss, competition.metric) == ("timm/resnet50", True, "ce", "accuracy")
    demo = tomllib.loads(competition.recipes()["demo"].read_text())
    assert demo["model"] == "timm/resnet10t" and demo["image_size"] <= 64 and demo["epochs"] <= 3


@pytest.mark.slow
def test_demo_run_beats_the_majority_class_and_scores_the_held_out_split(tmp_path, monkeypatch):
    from compkit_covid_cxr import CovidCxr

    printed = []
    for module in (console,):
        real = module.echo
        monkeypatch.setattr(module, "echo", lambda message, real=real: (printed.append(message), real(message)))
    demo = tomllib.loads(CovidCxr().recipes()["demo"].read_text())
    result = end_to_end(NAME, tmp_path, *(f"{key}={value}".lower() for key, value in demo.items()
                                          if key not in ("n_folds", "num_workers")))
    assert result.best_score > result.baseline
    output = "\n".join(printed)
    assert "out-of-fold accuracy" in output and output.count("confusion matrix") == 2  # after train, at submit
    score = result.sidecar["test_score"]
    assert f"test accuracy {score:.5f} on the held-out split (24 samples)" in output
    assert score > 0.25 and len(pd.read_csv(result.submission)) == 24
