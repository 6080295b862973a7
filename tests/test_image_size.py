"""image_size as one side or height,width: parsing, config.json, the caches, every first-party plugin's
transforms, and a non-square digits run from training through submit and predict."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from compkit import pipeline
from compkit.cache import fingerprint, resize, resized_images
from compkit.competition import Competition
from compkit.config import Config, height_width, parse_sets, parse_size, resolve, size_text
from compkit.datasets import read_image
from compkit.errors import CompkitError
from compkit.gpu_data import DeviceLoader
from compkit.pipeline import _build, training
from compkit.places import Places
from tests._cli import FAST, invoke, places_env

HEIGHT, WIDTH = 20, 28  # digits are 28x28: a non-square run squeezes them to 20 rows of 28


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "parsed"), [
    (224, 224), ("224", 224), (" 96 ", 96), ("320,480", (320, 480)), ("320x480", (320, 480)),
    ("320X480", (320, 480)), ("320 , 480", (320, 480)), ([320, 480], (320, 480)), ((480, 320), (480, 320)),
    ("64x64", 64), ([64, 64], 64),  # two equal sides are the square they always were
])
def test_every_form_parses_to_one_int_or_a_height_width_tuple(given, parsed):
    assert parse_size(given) == parsed
    config = Config(image_size=given)
    assert config.image_size == parsed and type(config.image_size) is type(parsed)
    assert config.size == ((parsed, parsed) if isinstance(parsed, int) else parsed)


@pytest.mark.parametrize("bad", ["abc", "0x5", "5x0", "1,2,3", "", "3.5", "-4", "+4", "1_000", "12x", 0, -3, 2.5,
                                 True, [1], [1, 2, 3], [1, "2"], [0, 4], None])
def test_bad_sizes_are_errors_naming_the_key_and_value(bad):
    with pytest.raises(CompkitError, match=r"config key 'image_size' must be .*got") as raised:
        Config(image_size=bad)
    assert repr(bad) in str(raised.value)
    with pytest.raises(CompkitError, match="image_size"):
        Config().replace(image_size=bad)


def test_set_and_toml_take_every_form(tmp_path):
    assert parse_sets(["image_size=320,480"]) == {"image_size": (320, 480)}
    assert parse_sets(["image_size=320x480"]) == {"image_size": (320, 480)}
    assert parse_sets(["image_size=96"]) == {"image_size": 96}
    with pytest.raises(CompkitError, match="image_size.*'1,2,3'"):
        parse_sets(["image_size=1,2,3"])
    recipe = tmp_path / "r.toml"
    for text, expected in (("image_size = [320, 480]\n", (320, 480)), ('image_size = "480x320"\n', (480, 320)),
                           ("image_size = 128\n", 128)):
        recipe.write_text(text)
        assert resolve(Config(), recipe, {}).image_size == expected
    recipe.write_text("image_size = [320, 480, 3]\n")
    with pytest.raises(CompkitError, match=r"r.toml: config key 'image_size' must be"):
        resolve(Config(), recipe, {})


def test_the_cli_flag_takes_height_width_and_refuses_bad_sizes(tmp_path):
    result = invoke("train", "digits", "--image-size", "0x5", env=places_env(tmp_path))
    assert result.exit_code == 2 and "--image-size" in result.output and "'0x5'" in result.output
    result = invoke("train", "digits", "--image-size", "abc", env=places_env(tmp_path))
    assert result.exit_code == 2 and "must be one number or height,width" in result.output


def test_d4_needs_a_square_size():
    with pytest.raises(CompkitError, match="tta 'd4'.*square image_size; got 20x28"):
        Config(image_size=(20, 28), tta="d4")
    assert Config(image_size=(20, 28), tta="flips").tta == "flips" and Config(image_size=28, tta="d4").tta == "d4"


def test_sizes_are_written_as_people_write_them():
    assert [size_text(s) for s in (224, (320, 480), [480, 320], (64, 64))] == ["224", "320x480", "480x320", "64"]
    assert height_width(32) == (32, 32) and height_width((32, 48)) == (32, 48)


# -- config.json ----------------------------------------------------------------------------------


def test_height_width_is_saved_as_a_list_and_read_back_equal():
    config = Config(image_size="320x480", epochs=3)
    saved = json.loads(config.to_json())
    assert saved["image_size"] == [320, 480]
    again = Config.from_dict(saved)
    assert again == config and again.image_size == (320, 480) and again.size == (320, 480)
    assert again.to_json() == config.to_json()


def test_a_square_config_is_what_it_was_before():
    before = {**json.loads(Config().to_json()), "image_size": 224}  # what compkit wrote before H,W existed
    for given in (224, "224", [224, 224], "224x224"):
        config = Config(image_size=given)
        assert config == Config() and config.image_size == 224 and type(config.image_size) is int
        assert json.loads(config.to_json()) == before
    assert Config.from_dict(before) == Config()


# -- the caches -----------------------------------------------------------------------------------


def write_images(folder: Path, count: int = 4) -> list[Path]:
    """PNGs of 30 rows x 50 columns whose pixels tell rows from columns."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[0:30, 0:50]
    paths = []
    for index in range(count):
        image = np.stack([rows * 8, cols * 5, np.full_like(rows, index * 40)], axis=-1).astype(np.uint8)
        paths.append(folder / f"{index}.png")
        cv2.imwrite(str(paths[-1]), image[:, :, ::-1])
    return paths


def test_each_orientation_has_its_own_cache_with_images_of_its_shape(tmp_path):
    paths = write_images(tmp_path / "images")
    cache = tmp_path / "cache"
    wide = resized_images(paths, (HEIGHT, WIDTH), cache, progress=False)
    tall = resized_images(paths, (WIDTH, HEIGHT), cache, progress=False)
    assert wide.shape == (4, HEIGHT, WIDTH, 3) and tall.shape == (4, WIDTH, HEIGHT, 3)
    assert Path(wide.filename).name.startswith(f"images-{HEIGHT}x{WIDTH}-")
    assert Path(tall.filename).name.startswith(f"images-{WIDTH}x{HEIGHT}-")
    assert len(list(cache.glob("*.npy"))) == 2  # neither evicts the other
    source = read_image(paths[1])
    assert np.array_equal(wide[1], cv2.resize(source, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA))
    assert np.array_equal(tall[1], resize(source, (WIDTH, HEIGHT)))
    assert not np.array_equal(wide[1], tall[1].transpose(1, 0, 2))  # really resized, not transposed
    again = resized_images(paths, [HEIGHT, WIDTH], cache, progress=False)  # a list: the same cache
    assert again.filename == wide.filename


def test_a_square_cache_keeps_its_name_and_key(tmp_path):
    paths = write_images(tmp_path / "images", 2)
    for size in (16, (16, 16)):
        images = resized_images(paths, size, tmp_path / "cache", read=read_image, progress=False)
        key = fingerprint(paths, 16, 3, read_image.__qualname__)  # what a square cache was always named by
        assert Path(images.filename).name.endswith(f"-{key}.npy") and images.shape == (2, 16, 16, 3)
        assert Path(images.filename).name.startswith("images-16-")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_the_device_loader_resizes_batches_to_height_width():
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    loader = DeviceLoader(images, np.arange(6), batch_size=3, mean=(0, 0, 0), std=(1, 1, 1), device="cpu",
                          size=(HEIGHT, WIDTH), train=False)
    assert [tuple(batch["image"].shape) for batch in loader] == [(3, 3, HEIGHT, WIDTH)] * 2


# -- the default and the plugins' transforms ------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "cifar10", "hotdog", "plant-pathology", "covid-cxr"])
@pytest.mark.parametrize("stage", ["train", "test"])
def test_each_plugins_transforms_give_height_width(name, stage):
    comp = pipeline.competition(name)
    channels = () if comp.in_channels == 1 else (comp.in_channels,)
    image = np.random.default_rng(1).integers(0, 256, (300, 260, *channels), dtype=np.uint8)
    for height, width in ((HEIGHT, WIDTH), (WIDTH, HEIGHT)):
        config = comp.defaults.replace(image_size=(height, width))
        assert comp.transforms(stage, config)(image=image)["image"].shape[:2] == (height, width)


def test_the_default_dataset_decodes_a_jpeg_covering_both_sides(tmp_path):
    """A reduced-scale decode must keep both sides at least the resize's, whichever way round the photo is."""
    photo = np.random.default_rng(2).integers(0, 256, (200, 800, 3), dtype=np.uint8)  # 800 wide, 200 high
    cv2.imwrite(str(tmp_path / "wide.jpg"), photo)
    table = pd.DataFrame({"id": [1], "path": ["wide.jpg"], "target": [0]})
    comp = type("Plain", (Competition,), {"name": "plain", "classes": ("a", "b")})()
    config = Config(image_size=(100, 40))  # tall from wide: the short side of the photo must reach 100
    dataset = comp.dataset(table, tmp_path, "valid", config)
    decoded = dataset.load(0)
    assert decoded.shape[0] >= 100 and decoded.shape[1] >= 40 and decoded.shape[:2] != photo.shape[:2]
    assert tuple(dataset[0]["image"].shape) == (3, 100, 40)


def test_siim_caches_images_and_masks_at_height_width(tmp_path):
    from compkit_siim import Siim, layout
    from compkit_siim.dataset import CACHE
    from compkit_siim.demo import write_demo

    write_demo(tmp_path, seed=1)
    table = layout.train_table(tmp_path)
    rows = table[table["has_mask"] == 1].head(2)
    for height, width in ((32, 48), (48, 32)):
        item = Siim().dataset(rows, tmp_path, "train", Siim.defaults.replace(image_size=(height, width)))[0]
        assert tuple(item["image"].shape) == (1, height, width) and tuple(item["target"].shape) == (1, height, width)
        assert item["target"].sum() > 0
    names = sorted(path.name.split("-")[2] for path in (tmp_path / CACHE).glob("train-*.npy"))
    assert names == ["32x48", "32x48", "48x32", "48x32"]  # images and masks, each orientation its own


# -- a non-square run end to end ------------------------------------------------------------------


def shrink(root: Path, train_rows: int, test_rows: int) -> None:
    """Keep the first rows of the demo's CSVs, so a CPU run takes seconds."""
    for name, rows in (("train.csv", train_rows), ("test.csv", test_rows), ("sample_submission.csv", test_rows),
                       ("test_labels.csv", test_rows)):
        if (root / name).is_file():
            pd.read_csv(root / name).head(rows).to_csv(root / name, index=False)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("non-square")
    env = places_env(base)
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    shrink(base / "d" / "digits", 160, 24)
    result = invoke("train", "digits", "--fold", "0", "--run-name", "wide", *FAST, "--batch-size", "16",
                    "--image-size", f"{HEIGHT},{WIDTH}", "--set", "tta=flips", env=env)
    assert result.exit_code == 0, result.output
    return base, env, result.output


@pytest.mark.slow
def test_a_non_square_run_trains_on_height_width_batches(digits_run):
    base, _, output = digits_run
    assert f"image_size={HEIGHT}x{WIDTH}*" in output  # the config block shows it as given
    saved = json.loads((base / "r" / "digits" / "wide" / "config.json").read_text())
    assert saved["image_size"] == [HEIGHT, WIDTH]
    comp = pipeline.competition("digits")
    config = Config.from_dict(saved)
    table = pipeline.table(comp, base / "d" / "digits", "train")
    assert tuple(comp.dataset(table, base / "d" / "digits", "train", config)[0]["image"].shape) == (1, HEIGHT, WIDTH)
    batch = next(iter(_build.loader(comp, table.head(40), base / "d" / "digits", "train", config)))
    assert tuple(batch["image"].shape) == (16, 1, HEIGHT, WIDTH)  # the run's batch size
    assert torch.isfinite(batch["image"]).all()


@pytest.mark.slow
def test_a_non_square_run_submits_with_flips_and_refuses_turning_views(digits_run):
    base, env, _ = digits_run
    result = invoke("submit", "digits", "--run", "wide", env=env)
    assert result.exit_code == 0, result.output
    assert "tta flips" in result.output
    written = pd.read_csv(next(line[6:] for line in result.output.splitlines() if line.startswith("wrote ")))
    assert len(written) == 24 and written["Label"].between(0, 9).all()
    refused = invoke("submit", "digits", "--run", "wide", "--tta", "d4", env=env)
    assert refused.exit_code == 1 and "square" in refused.output and f"{HEIGHT}x{WIDTH}" in refused.output


@pytest.mark.slow
def test_a_non_square_run_predicts_a_folder_and_lists_its_size(digits_run, tmp_path):
    base, env, _ = digits_run
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f"{index}.png"), np.full((28, 28), 60 * index, dtype=np.uint8))
    out = tmp_path / "predictions.csv"
    result = invoke("predict", "digits", "--run", "wide", "--images", str(folder), "--out", str(out), env=env)
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 3
    listing = invoke("runs", "digits", env=env)
    assert listing.exit_code == 0 and f"{HEIGHT}x{WIDTH}" in listing.output.splitlines()[1]


@pytest.mark.slow
def test_the_non_square_run_is_used_where_it_was_trained(digits_run):
    base, _, _ = digits_run
    where = Places(base / "d", base / "r", base / "s")
    comp = pipeline.competition("digits")
    config = training._run_config(comp, where.runs / "digits" / "wide", None, {})
    assert config.size == (HEIGHT, WIDTH)
