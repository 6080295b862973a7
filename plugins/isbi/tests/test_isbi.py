"""The isbi plugin: the shared contract, the layouts, the download, the split, the file submission, a demo run."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import tomllib
from click.testing import CliRunner
from PIL import Image

from compkit import kaggle, metrics
from compkit.cli import cli
from compkit.errors import CompkitError
from compkit.outputs import read_tiff_stack
from compkit.testing import CompetitionContract, demo_fixtures

NAME = "isbi"


class TestIsbi(CompetitionContract):
    name = NAME
    module = "compkit_isbi"


competition, root = demo_fixtures(NAME)


def _grey(path):
    return np.asarray(Image.open(path))


def _copy_demo(root, tmp_path):
    shutil.copytree(root, tmp_path / "data")
    return tmp_path / "data"


# -- tables --------------------------------------------------------------------------------------


def test_tables_list_the_slices_in_slice_order(competition, root):
    train, test = competition.train_table(root), competition.test_table(root)
    assert train["id"].tolist() == [str(i) for i in range(12)]  # 10 and 11 after 9: numbers, not text
    assert test["id"].tolist() == ["0", "1", "2", "3"]
    assert list(train.columns) == ["id", "path", "label", "height", "width"]
    assert list(test.columns) == ["id", "path", "height", "width"]
    assert train["path"].tolist()[:2] == ["train/image/0.png", "train/image/1.png"]
    assert train["label"].tolist()[-1] == "train/label/11.png" and test["path"].tolist()[-1] == "test/3.png"
    assert (train["height"] == 64).all() and (test["width"] == 64).all()
    assert all((root / path).is_file() for path in [*train["path"], *train["label"], *test["path"]])


def test_demo_labels_are_binary_with_membrane_lines_and_a_learnable_signal(root):
    images = np.stack([_grey(root / "train" / "image" / f"{i}.png") for i in range(12)]).astype(float)
    labels = np.stack([_grey(root / "train" / "label" / f"{i}.png") for i in range(12)])
    assert set(np.unique(labels)) == {0, 255}  # 0 membrane, 255 cell, as in ISBI
    membrane = labels == 0
    assert 0.12 < membrane.mean() < 0.35  # the real slices: 17 % to 27 %
    assert images[membrane].mean() < images[~membrane].mean() - 50  # dark lines between lighter cells


def test_the_item_target_is_the_membrane(competition, root):
    config = competition.defaults.replace(image_size=64)
    item = competition.dataset(competition.train_table(root).head(1), root, "valid", config)[0]
    label = _grey(root / "train" / "label" / "0.png")
    np.testing.assert_array_equal(item["target"][0].numpy(), (label == 0).astype(np.float32))
    image = _grey(root / "train" / "image" / "0.png")
    expected = (image / 255 - competition.mean[0]) / competition.std[0]
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-5)  # valid: resize (a no-op) + grey norm


def test_training_flips_image_and_mask_together(competition, root):
    config = competition.defaults.replace(image_size=64, seed=0)
    dataset = competition.dataset(competition.train_table(root).head(1), root, "train", config)
    label = (_grey(root / "train" / "label" / "0.png") == 0).astype(np.float32)
    seen = set()
    for _ in range(40):
        target = dataset[0]["target"][0].numpy()
        views = {"none": label, "h": label[:, ::-1], "v": label[::-1], "hv": label[::-1, ::-1]}
        (name,) = [key for key, view in views.items() if np.array_equal(target, view)]
        seen.add(name)
    assert seen == {"none", "h", "v", "hv"}


def test_the_index_follows_the_folders_and_skips_the_tutorials_results(competition, root, tmp_path):
    data = _copy_demo(root, tmp_path)
    (data / "slices.csv").unlink()
    shutil.copy(data / "test" / "0.png", data / "test" / "0_predict.png")  # the tutorial writes these there
    assert competition.test_table(data)["id"].tolist() == ["0", "1", "2", "3"]
    assert (data / "slices.csv").read_text() == (root / "slices.csv").read_text()
    for folder in ("train/image", "train/label"):  # a slice added by hand
        shutil.copy(data / folder / "0.png", data / folder / "12.png")
    assert competition.train_table(data)["id"].tolist()[-2:] == ["11", "12"]
    assert "12,train,train/image/12.png,train/label/12.png,64,64" in (data / "slices.csv").read_text()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: shutil.copy(d / "test/0.png", d / "test/first.png"), r"test/first.png: not a slice; slices are named"),
    (lambda d: (d / "train/label/5.png").unlink(), r"slice 5 is in only one of .*train/image and .*train/label"),
    (lambda d: Image.new("L", (32, 64)).save(d / "train/label/3.png"), r"label/3.png is 64x32 but its slice"),
    (lambda d: shutil.rmtree(d / "test"), r"test is missing: expected train/image/<n>.png, .*download isbi"),
])
def test_a_broken_folder_is_an_error_naming_it(competition, root, tmp_path, edit, message):
    data = _copy_demo(root, tmp_path)
    (data / "slices.csv").unlink()
    edit(data)
    with pytest.raises(CompkitError, match=message):
        competition.train_table(data)


def test_an_empty_folder_says_what_to_download(competition, tmp_path):
    with pytest.raises(CompkitError, match="train/image is missing: expected .*run: compkit download isbi"):
        competition.train_table(tmp_path)


# -- the split -----------------------------------------------------------------------------------


def test_folds_are_contiguous_blocks_of_slices(competition, root):
    assert competition.fixed_split(pd.DataFrame({"id": range(30)}), root).tolist() == [k for k in range(5)
                                                                                        for _ in range(6)]
    demo = competition.fixed_split(competition.train_table(root), root)
    assert demo.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]


# -- download ------------------------------------------------------------------------------------


def test_the_sources_pin_one_commit_and_list_every_file():
    from compkit_isbi import sources

    assert re.fullmatch(r"https://raw\.githubusercontent\.com/zhixuhao/unet/[0-9a-f]{40}/data/membrane",
                        sources.BASE_URL)
    expected = {f"{folder}/{i}.png" for folder in ("train/image", "train/label", "test") for i in range(30)}
    assert set(sources.SHA256) == expected
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in sources.SHA256.values())
    assert len(set(sources.SHA256.values())) == 90  # no file listed twice under two names


@pytest.fixture
def server(root, tmp_path):
    """A local HTTP server holding the demo's files at the tutorial's paths; yields (base url, requests)."""
    served = tmp_path / "served" / "data" / "membrane"
    shutil.copytree(root, served, ignore=shutil.ignore_patterns("slices.csv", ".demo"))
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    handler = functools.partial(Handler, directory=str(tmp_path / "served"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/data/membrane", requests, served
    httpd.shutdown()
    httpd.server_close()


def _point_sources_at(monkeypatch, base, served, paths):
    from compkit_isbi import sources

    digests = {path: hashlib.sha256((served / path).read_bytes()).hexdigest() for path in paths}
    monkeypatch.setattr(sources, "BASE_URL", base)
    monkeypatch.setattr(sources, "SHA256", digests)
    return digests


SOME = ["train/image/0.png", "train/image/1.png", "train/label/0.png", "train/label/1.png", "test/0.png"]


def test_download_fetches_each_file_checked_into_the_tutorials_layout(competition, server, tmp_path, monkeypatch):
    base, requests, served = server
    _point_sources_at(monkeypatch, base, served, SOME)
    data = tmp_path / "data"
    competition.download(data)
    assert sorted(requests) == sorted(f"/data/membrane/{path}" for path in SOME)
    for path in SOME:
        assert (data / path).read_bytes() == (served / path).read_bytes()
    assert competition.train_table(data)["id"].tolist() == ["0", "1"]
    assert competition.test_table(data)["path"].tolist() == ["test/0.png"]
    competition.download(data)  # done already: no second request
    assert len(requests) == len(SOME)


def test_a_file_that_does_not_match_its_checksum_is_refused(competition, server, tmp_path, monkeypatch):
    from compkit_isbi import sources

    base, _, served = server
    digests = _point_sources_at(monkeypatch, base, served, SOME)
    monkeypatch.setattr(sources, "SHA256", {**digests, "test/0.png": "0" * 64})
    data = tmp_path / "data"
    with pytest.raises(CompkitError, match="sha256 checksum mismatch for .*test/0.png"):
        competition.download(data)
    assert not (data / "test" / "0.png").exists() and not (data / "slices.csv").exists()


def test_the_challenges_tiffs_are_split_into_the_png_layout_without_downloading(competition, root, tmp_path,
                                                                                monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded although the TIFFs are there")

    monkeypatch.setattr(kaggle, "url", no_network)
    data = tmp_path / "data"
    data.mkdir()
    folders = {"train-volume.tif": "train/image", "train-labels.tif": "train/label", "test-volume.tif": "test"}
    count = {"train/image": 12, "train/label": 12, "test": 4}
    for name, folder in folders.items():
        pages = [Image.open(root / folder / f"{i}.png") for i in range(count[folder])]
        pages[0].save(data / name, save_all=True, append_images=pages[1:])
    competition.download(data)
    for folder, n in count.items():
        for i in (0, n - 1):
            np.testing.assert_array_equal(_grey(data / folder / f"{i}.png"), _grey(root / folder / f"{i}.png"))
    assert len(competition.train_table(data)) == 12 and len(competition.test_table(data)) == 4
    (data / "test-volume.tif").unlink()
    with pytest.raises(CompkitError, match="some of the challenge's TIFFs but not test-volume.tif"):
        competition.download(data)


# -- the submission ------------------------------------------------------------------------------


def _predictions(count, size=64, seed=0):
    return list(np.random.default_rng(seed).random((count, size, size), dtype=np.float32))


def test_files_are_the_challenges_tiff_and_one_mask_per_slice(competition, root, tmp_path):
    table = competition.test_table(root)
    predictions = _predictions(len(table))
    written = competition.write_files(table, predictions, tmp_path)
    assert [path.relative_to(tmp_path).as_posix() for path in written] == [
        "test-probabilities.tif", "masks/0.png", "masks/1.png", "masks/2.png", "masks/3.png"]
    stack = read_tiff_stack(tmp_path / "test-probabilities.tif")
    assert stack.dtype == np.float32 and stack.shape == (4, 64, 64)
    np.testing.assert_allclose(stack, 1 - np.stack(predictions), atol=1e-7)  # 0 = certain membrane
    for row, prediction in enumerate(predictions):
        mask = _grey(tmp_path / "masks" / f"{table['id'][row]}.png")
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, np.where(prediction > 0.5, 0, 255))  # like the labels: 0 membrane


def test_predictions_at_another_size_are_resized_to_the_slices(competition, root, tmp_path):
    table = competition.test_table(root)
    small = [np.full((32, 32), value, np.float32) for value in (0.0, 0.25, 0.75, 1.0)]
    competition.write_files(table, small, tmp_path)
    stack = read_tiff_stack(tmp_path / "test-probabilities.tif")
    assert stack.shape == (4, 64, 64)
    np.testing.assert_allclose(stack[:, 10, 20], [1.0, 0.75, 0.25, 0.0], atol=1e-6)


@pytest.mark.parametrize(("bad", "message"), [
    (lambda p: p[:3], r"3 slice\(s\), expected 4"),
    (lambda p: [*p[:3], np.full((64, 64), np.nan, np.float32)], r"slice 3 \(3\) has 4096 NaN"),
    (lambda p: [p[0] * 1.5, *p[1:]], r"slice 0 \(0\) has values from .*, expected 0 to 1"),
    (lambda p: [p[0] - 0.5, *p[1:]], r"slice 0 \(0\) has values from -"),
    (lambda p: [p[0][None], *p[1:]], r"slice 0 \(0\) has shape \(1, 64, 64\), expected a 2-D"),
])
def test_a_bad_prediction_writes_nothing(competition, root, tmp_path, bad, message):
    table = competition.test_table(root)
    with pytest.raises(CompkitError, match=message):
        competition.write_files(table, bad(_predictions(len(table))), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_test_slices_of_two_sizes_cannot_share_a_tiff(competition, root, tmp_path):
    table = competition.test_table(root)
    table.loc[2, "height"] = 80
    with pytest.raises(CompkitError, match="the test slices have 2 sizes .*share a size"):
        competition.write_files(table, _predictions(len(table)), tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- recipes -------------------------------------------------------------------------------------


def test_defaults_are_the_sources_recipe_and_the_demo_recipe_is_small(competition):
    config = competition.defaults
    assert (config.model, config.pretrained, config.loss, competition.metric) == ("unet/vgg13_bn", False, "bce",
                                                                                  "dice")
    assert (config.optimizer, config.lr, config.weight_decay, config.momentum, config.decay_1d) == (
        "rmsprop", 1e-5, 1e-8, 0.9, True)
    assert (config.batch_size, config.epochs, config.checkpoint, config.mask_threshold) == (1, 40, "train_loss", 0.5)
    assert (config.scheduler, config.drop_last, config.size) == ("none", False, (512, 512))
    assert (competition.output_files, competition.sample_submission, competition.in_channels) == (True, None, 1)
    demo = tomllib.loads(competition.recipes()["demo"].read_text())
    assert demo["model"].startswith("unet/") and demo["pretrained"] is False
    assert demo["image_size"] <= 64 and demo["epochs"] <= 4 and demo["lr"] > config.lr


# -- a demo run ----------------------------------------------------------------------------------


def _run(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_demo_run_beats_a_constant_and_writes_the_challenges_files(tmp_path, monkeypatch):
    for variable, folder in (("COMPKIT_DATA_DIR", "d"), ("COMPKIT_RUNS_DIR", "r"), ("COMPKIT_SUBMISSIONS_DIR", "s")):
        monkeypatch.setenv(variable, str(tmp_path / folder))
    _run("download", NAME, "--demo")
    # the tests' fast flags (CPU, no workers, quiet) on the demo recipe, which picks the small U-Net
    _run("train", NAME, "--fold", "0", "--recipe", "demo", "--run", "e2e", "--device", "cpu", "--quiet",
         "--set", "num_workers=0")
    fold = tmp_path / "r" / NAME / "e2e" / "fold0"
    best = pd.read_csv(fold / "metrics.csv")["dice"].max()
    targets = np.load(fold / "oof.npz")["targets"]
    all_membrane = metrics.dice(targets, np.ones(targets.shape, np.float32))
    all_cell = metrics.dice(targets, np.zeros(targets.shape, np.float32))
    assert targets.shape == (3, 64, 64) and best > max(all_membrane, all_cell) + 0.2
    _run("submit", NAME, "--run", "e2e", "--device", "cpu")
    (sidecar,) = (tmp_path / "s" / NAME).glob("*.json")
    folder = sidecar.with_suffix("")
    stack = read_tiff_stack(folder / "test-probabilities.tif")
    assert stack.dtype == np.float32 and stack.shape == (4, 64, 64)  # one page per test row, the slices' size
    assert stack.min() >= 0 and stack.max() <= 1 and stack.std() > 0.1
    masks = sorted((folder / "masks").iterdir(), key=lambda path: int(path.stem))
    assert [path.name for path in masks] == ["0.png", "1.png", "2.png", "3.png"]
    for page, path in zip(stack, masks):
        np.testing.assert_array_equal(_grey(path), np.where(page < 0.5, 0, 255))
    recorded = json.loads(sidecar.read_text())
    assert sorted(recorded["files"]) == sorted(["test-probabilities.tif", *(f"masks/{p.name}" for p in masks)])
