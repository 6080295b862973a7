"""The cifar10 plugin: the shared contract, tables, .7z unpacking, the image cache, resnet18-cifar, a demo run."""

import numpy as np
import pandas as pd
import pytest
import torch

from compkit import registry, submission
from compkit.errors import CompkitError
from compkit.testing import CompetitionContract, demo_fixtures, end_to_end

NAME = "cifar10"


class TestCifar10(CompetitionContract):
    name = NAME
    module = "compkit_cifar10"
    image_size = 32


competition, root = demo_fixtures(NAME)


def test_demo_is_in_kaggles_unpacked_layout(competition, root):
    labels = pd.read_csv(root / "trainLabels.csv")
    sample = pd.read_csv(root / "sampleSubmission.csv")
    assert list(labels.columns) == ["id", "label"] and list(sample.columns) == ["id", "label"]
    assert set(labels["label"]) == set(competition.classes)
    assert labels["id"].tolist() == list(range(1, len(labels) + 1))
    assert (root / "train" / "1.png").is_file() and (root / "test" / f"{len(sample)}.png").is_file()


def test_tables_map_ids_to_pngs_and_labels_to_indices(competition, root):
    train, test = competition.train_table(root), competition.test_table(root)
    assert train["path"][0] == f"train/{train['id'][0]}.png"
    assert [competition.classes[t] for t in train["target"]] == train["label"].tolist()
    assert train["target"].dtype == np.int64
    assert test["id"].tolist() == pd.read_csv(root / "sampleSubmission.csv", dtype=str)["id"].tolist()
    assert test["path"][0] == f"test/{test['id'][0]}.png"


def test_unknown_label_is_named(competition, tmp_path):
    (tmp_path / "train").mkdir()
    pd.DataFrame({"id": [1, 2], "label": ["cat", "kitten"]}).to_csv(tmp_path / "trainLabels.csv", index=False)
    with pytest.raises(CompkitError, match="row 1 .*'kitten'"):
        competition.train_table(tmp_path)


def test_packed_data_says_to_unpack(competition, tmp_path):
    pd.DataFrame({"id": [1], "label": ["cat"]}).to_csv(tmp_path / "trainLabels.csv", index=False)
    (tmp_path / "train.7z").write_bytes(b"")
    with pytest.raises(CompkitError, match="unpack .*train.7z"):
        competition.train_table(tmp_path)


def test_unpack_extracts_each_archive_once(tmp_path):
    import py7zr

    from compkit_cifar10.data import unpack

    source = tmp_path / "source" / "train"
    source.mkdir(parents=True)
    (source / "1.png").write_bytes(b"png")
    with py7zr.SevenZipFile(tmp_path / "train.7z", "w") as archive:
        archive.writeall(source, "train")
    assert unpack(tmp_path) == [tmp_path / "train.7z"]
    assert (tmp_path / "train" / "1.png").read_bytes() == b"png"
    assert unpack(tmp_path) == []  # done already: nothing extracted again
    (tmp_path / "train" / "1.png").unlink()
    (tmp_path / "train").rmdir()
    assert unpack(tmp_path) == [tmp_path / "train.7z"]  # the folder went away: extracted again


def test_download_fetches_then_unpacks_both_archives(competition, tmp_path, monkeypatch):
    import py7zr

    from compkit import kaggle

    for name in ("train", "test"):
        source = tmp_path / "source" / name
        source.mkdir(parents=True)
        (source / "1.png").write_bytes(name.encode())
    calls = []

    def competition_files(slug, root, force=False):  # what the Kaggle zip holds, already extracted
        calls.append(slug)
        for name in ("train", "test"):
            if not (root / f"{name}.7z").exists():
                with py7zr.SevenZipFile(root / f"{name}.7z", "w") as archive:
                    archive.writeall(tmp_path / "source" / name, name)
        return root

    monkeypatch.setattr(kaggle, "competition_files", competition_files)
    root = tmp_path / "data"
    root.mkdir()
    competition.download(root)
    assert calls == ["cifar-10"]
    assert (root / "train" / "1.png").read_bytes() == b"train" and (
        root / "test" / "1.png"
    ).read_bytes() == b"test"
    (root / "test" / "1.png").write_bytes(b"kept")
    competition.download(root)
    assert (root / "test" / "1.png").read_bytes() == b"kept"  # not unpacked a second time


def test_valid_items_are_the_normalised_cached_pixels(competition, root):
    import cv2

    config = competition.defaults.replace(image_size=32)
    table = competition.train_table(root)
    dataset = competition.dataset(table.iloc[[3]].reset_index(drop=True), root, "valid", config)
    item = dataset[0]
    pixels = cv2.cvtColor(cv2.imread(str(root / table["path"][3])), cv2.COLOR_BGR2RGB) / 255.0
    expected = (pixels - np.array(competition.mean)) / np.array(competition.std)
    assert np.allclose(item["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert item["target"].item() == table["target"][3]


def test_train_items_are_padded_crops_of_the_image(competition, root):
    config = competition.defaults.replace(image_size=32)
    table = competition.train_table(root).head(1)
    valid = competition.dataset(table, root, "valid", config)[0]["image"]
    black = -np.array(competition.mean) / np.array(competition.std)
    padded = np.broadcast_to(black[:, None, None], (3, 40, 40)).copy()
    padded[:, 4:36, 4:36] = valid.numpy()
    dataset = competition.dataset(table, root, "train", config)
    for _ in range(5):
        crop = dataset[0]["image"].numpy()
        views = [padded[:, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(
            np.allclose(crop, v, atol=1e-5) or np.allclose(crop, v[:, :, ::-1], atol=1e-5) for v in views
        )


def test_resnet18_cifar_keeps_the_resolution_in_its_stem():
    model = registry.get().model("resnet18-cifar", 10, 3)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    images = torch.randn(2, 3, 32, 32)
    assert model.forward_features(images).shape == (2, 512, 4, 4)
    assert model(images).shape == (2, 10)
    assert model.get_classifier().out_features == 10  # the head head_lr_multiplier finds


def test_resnet18_cifar_takes_other_channel_counts_and_rejects_variants():
    assert registry.get().model("resnet18-cifar", 2, in_channels=1)(torch.randn(1, 1, 32, 32)).shape == (1, 2)
    with pytest.raises(CompkitError, match="no variants"):
        registry.get().model("resnet18-cifar/wide", 10, 3)


def test_submission_names_classes_in_the_samples_layout(competition, root):
    table = competition.test_table(root)
    predictions = np.eye(10, dtype=np.float32)[np.arange(len(table)) % 10]
    frame = competition.submission(table, predictions)
    submission.validate(frame, competition.read_sample(root), competition.labels())
    assert frame["label"].tolist()[:3] == list(competition.classes[:3])


@pytest.mark.slow
def test_demo_run_beats_the_baseline_and_submits(tmp_path):
    result = end_to_end(
        NAME,
        tmp_path,
        "epochs=5",
        "image_size=16",
        "model=resnet18-cifar",
        "pretrained=false",
        "batch_size=16",
        "lr=2e-3",
        "optimizer=adamw",
        "scheduler=cosine",
        "warmup_epochs=0",
        "loss=ce",
        "tta=none",
    )
    competition = registry.get().competition(NAME)
    sample = competition.read_sample(tmp_path / "data" / NAME)
    submission.validate(pd.read_csv(result.submission, dtype=str), sample, competition.labels())
    assert result.best_score > result.baseline


@pytest.mark.slow
def test_gpu_data_path_trains_from_a_device_resident_copy(tmp_path):
    # the same short recipe with the training set held on the device (here the CPU) as uint8
    result = end_to_end(NAME, tmp_path, "epochs=5", "image_size=16", "model=resnet18-cifar", "pretrained=false",
                        "batch_size=16", "lr=2e-3", "optimizer=adamw", "scheduler=cosine", "warmup_epochs=0",
                        "loss=ce", "tta=none", "gpu_data=true")
    assert result.best_score > result.baseline
    assert result.metrics["train_loss"].iloc[-1] < result.metrics["train_loss"].iloc[0]
