"""The plant-pathology plugin: the shared contract, its tables, loss, image cache, submission and a demo run."""

import numpy as np
import pandas as pd
import pytest
import torch

from compkit import registry, submission
from compkit.errors import CompkitError
from compkit.testing import CompetitionContract, demo_fixtures, end_to_end

NAME = "plant-pathology"
CLASSES = ["healthy", "multiple_diseases", "rust", "scab"]


class TestPlantPathology(CompetitionContract):
    name = NAME
    module = "compkit_plant_pathology"


competition, root = demo_fixtures(NAME)


def test_demo_is_in_kaggles_layout(root):
    train, test = pd.read_csv(root / "train.csv"), pd.read_csv(root / "test.csv")
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(train.columns) == ["image_id", *CLASSES]
    assert (train[CLASSES].sum(axis=1) == 1).all() and (train[CLASSES].sum() > 0).all()
    assert list(test.columns) == ["image_id"] and list(sample.columns) == ["image_id", *CLASSES]
    assert sample["image_id"].tolist() == test["image_id"].tolist()
    assert (root / "images" / f"{train['image_id'][0]}.jpg").is_file()
    assert (root / "images" / f"{test['image_id'][0]}.jpg").is_file()


def test_train_table_adds_the_argmax_label_and_path(competition, root):
    table = competition.train_table(root)
    raw = pd.read_csv(root / "train.csv")
    expected = [CLASSES[i] for i in raw[CLASSES].to_numpy().argmax(axis=1)]
    assert table["label"].tolist() == expected
    assert table["path"][0] == f"images/{raw['image_id'][0]}.jpg"
    assert competition.stratify == "label"


def test_train_table_rejects_a_row_that_is_not_one_hot(competition, tmp_path):
    pd.DataFrame(
        {
            "image_id": ["Train_0", "Train_1"],
            "healthy": [1, 1],
            "multiple_diseases": [0, 0],
            "rust": [0, 1],
            "scab": [0, 0],
        }
    ).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(CompkitError, match="row 1 .*Train_1.* not one-hot"):
        competition.train_table(tmp_path)


def test_download_asks_kaggle_for_the_competitions_files(competition, tmp_path, monkeypatch):
    from compkit import kaggle

    calls = []
    monkeypatch.setattr(
        kaggle, "competition_files", lambda slug, root, force=False: calls.append((slug, root))
    )
    competition.download(tmp_path)
    assert calls == [("plant-pathology-2020-fgvc7", tmp_path)]


def test_missing_table_says_how_to_get_it(competition, tmp_path):
    with pytest.raises(CompkitError, match="compkit download plant-pathology"):
        competition.test_table(tmp_path)


def test_dataset_reads_a_folds_rows_from_one_shared_cache(competition, root):
    config = competition.defaults.replace(image_size=32)
    table = competition.train_table(root)
    subset = table.iloc[[5, 2]].reset_index(drop=True)
    dataset = competition.dataset(subset, root, "valid", config)
    assert len(dataset) == 2
    assert torch.equal(dataset[1]["target"], torch.tensor(table.loc[2, CLASSES].to_numpy("float32")))
    competition.dataset(table, root, "train", config)
    assert len(list((root / "cache").glob("train-32-*.npy"))) == 1  # subsets never make their own cache


def test_jpeg_reader_decodes_at_a_reduced_scale_that_still_covers_the_size(tmp_path):
    import cv2

    from compkit_plant_pathology.data import jpeg_reader

    image = np.zeros((400, 600, 3), np.uint8)
    image[:, 300:] = (200, 40, 10)
    cv2.imwrite(str(tmp_path / "leaf.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    small = jpeg_reader(100)(tmp_path / "leaf.jpg")
    assert small.shape == (100, 150, 3)  # 1/4 scale: the short side is still >= 100
    assert jpeg_reader(500)(tmp_path / "leaf.jpg").shape == (400, 600, 3)
    assert abs(int(small[50, 120, 0]) - 200) < 8 and small[50, 20].max() < 8  # RGB order kept


def test_a_truncated_or_missing_jpeg_is_an_error_naming_the_file(tmp_path):
    import cv2

    from compkit_plant_pathology.data import jpeg_reader

    cv2.imwrite(str(tmp_path / "leaf.jpg"), np.full((400, 600, 3), 90, np.uint8))
    data = (tmp_path / "leaf.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompkitError, match=r"cannot decode image .*cut\.jpg .*truncated.*--force"):
        jpeg_reader(100)(tmp_path / "cut.jpg")
    with pytest.raises(CompkitError, match=r"image file .*gone\.jpg is missing"):
        jpeg_reader(100)(tmp_path / "gone.jpg")


def test_dense_cross_entropy_matches_the_formula_and_hard_label_ce():
    loss = registry.get().loss("dense-ce")
    logits = torch.randn(6, 4)
    soft = torch.softmax(torch.randn(6, 4), dim=1)
    expected = -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(loss(logits, soft), expected)
    hard = torch.tensor([0, 3, 1, 2, 2, 0])
    onehot = torch.nn.functional.one_hot(hard, 4).float()
    assert torch.allclose(loss(logits, onehot), torch.nn.functional.cross_entropy(logits, hard))


def test_submission_has_the_samples_columns_and_the_probabilities(competition, root):
    table = competition.test_table(root)
    predictions = np.random.default_rng(1).dirichlet(np.ones(4), size=len(table)).astype(np.float32)
    frame = competition.submission(table, predictions)
    submission.validate(frame, competition.read_sample(root), competition.labels())
    assert list(frame.columns) == ["image_id", *CLASSES]
    assert np.allclose(frame[CLASSES].to_numpy(), predictions)


def test_score_is_mean_column_roc_auc(competition):
    targets = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 2]]
    assert competition.score(targets, targets) == pytest.approx(1.0)
    assert competition.score(targets, np.full_like(targets, 0.25)) == pytest.approx(0.5)


@pytest.mark.slow
def test_demo_run_beats_the_baseline_and_submits(tmp_path):
    result = end_to_end(
        NAME,
        tmp_path,
        "epochs=6",
        "image_size=64",
        "model=timm/resnet10t",
        "pretrained=false",
        "batch_size=16",
        "lr=3e-3",
        "optimizer=adamw",
        "warmup_epochs=0",
        "tta=none",
    )
    competition = registry.get().competition(NAME)
    sample = competition.read_sample(tmp_path / "data" / NAME)
    submission.validate(pd.read_csv(result.submission, dtype={"image_id": str}), sample, None)
    assert result.oof["targets"].shape[1] == 4
    assert result.best_score > result.baseline
