"""A plugin's own typed recipe keys (a Config subclass as its defaults): recipes, --set, type checks,
unknown-key errors, --help, config.json and --resume, like the core's keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest

from compkit import Config, hookimpl, pipeline, registry
from compkit.config import keys, own_keys, parse_sets, read_toml, resolve
from compkit.errors import CompkitError
from compkit.pipeline import _build, training
from compkit_digits import Digits
from tests._cli import fast, invoke, places_env

NAME = "toy-digits"


@dataclasses.dataclass(frozen=True)
class ToyConfig(Config):
    crop_height: int = 28  # rows the training images are resized to before the crop
    stretch: float = 1.0  # a float key, to check ints are taken for it
    colour: Literal["grey", "inverted"] = "grey"  # a choice key


class ToyDigits(Digits):
    """The digits demo, whose transforms read the plugin's own key."""

    name = NAME
    defaults = ToyConfig(model="timm/resnet10t", image_size=28, epochs=1, batch_size=16, precise_bn=0,
                         tta="none", crop_height=24)

    def transforms(self, stage: str, config: ToyConfig):
        import albumentations as A

        return A.Compose([A.Resize(config.crop_height, config.size[1]),
                          A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0)])


class ToyPlugin:
    @hookimpl
    def register_competitions(self, register):
        register(ToyDigits())


@pytest.fixture(scope="module")
def plugged():
    """ToyDigits registered in this process's plugin manager for the module's tests, then taken out."""
    manager = registry.get().manager
    manager.add("toy", ToyPlugin(), "compkit-toy", "0")
    assert not manager.plugins["toy"].error, manager.plugins["toy"].error
    registry.get.cache_clear()  # the registry is built once per process: again, with the toy plugin
    yield pipeline.competition(NAME)
    manager.pm.unregister(name="toy")
    manager.plugins.pop("toy")
    manager._warned.discard("toy")
    registry.get.cache_clear()


@pytest.fixture(scope="module")
def env(plugged, tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    env = places_env(base)
    assert invoke("download", NAME, "--demo", env=env).exit_code == 0
    root = base / "d" / NAME
    for name, rows in (("train.csv", 120), ("test.csv", 16), ("sample_submission.csv", 16), ("test_labels.csv", 16)):
        if (root / name).is_file():
            pd.read_csv(root / name).head(rows).to_csv(root / name, index=False)
    return {**env, "BASE": str(base)}


def run_config(env, run: str) -> dict:
    return json.loads((Path(env["BASE"]) / "r" / NAME / run / "config.json").read_text())


# -- the config class -----------------------------------------------------------------------------


def test_the_subclass_has_the_core_keys_then_its_own():
    assert keys(ToyConfig)[: len(keys())] == keys() and own_keys(ToyConfig) == ["crop_height", "stretch", "colour"]
    assert own_keys(Config) == []


def test_its_keys_are_type_checked_like_the_core_keys():
    with pytest.raises(CompkitError, match=r"config key 'crop_height' must be int, got 'tall'"):
        ToyConfig(crop_height="tall")
    with pytest.raises(CompkitError, match="crop_height"):
        ToyConfig().replace(crop_height=True)  # a bool is no int here either
    with pytest.raises(CompkitError, match=r"config key 'colour' must be one of grey, inverted, got 'red'"):
        ToyConfig(colour="red")
    assert ToyConfig(stretch=2).stretch == 2.0 and isinstance(ToyConfig(stretch=2).stretch, float)
    with pytest.raises(CompkitError, match="epochs"):  # the core's checks still run on a subclass
        ToyConfig(epochs=0)


def test_a_key_of_a_type_config_cannot_hold_is_refused_with_its_name():
    @dataclasses.dataclass(frozen=True)
    class Listy(Config):
        crops: list = dataclasses.field(default_factory=list)

    with pytest.raises(CompkitError, match=r"config key 'crops' of Listy is declared .*int, float, bool, str"):
        Listy()


def test_replace_and_from_dict_keep_the_class():
    config = ToyConfig().replace(crop_height=20, epochs=3)
    assert type(config) is ToyConfig and config.crop_height == 20
    again = ToyConfig.from_dict(json.loads(config.to_json()))
    assert again == config and type(again) is ToyConfig
    with pytest.raises(CompkitError, match="unknown config key.*crop_height"):
        Config.from_dict(json.loads(config.to_json()))  # the core's class does not know it


# -- recipes and --set ----------------------------------------------------------------------------


def test_a_recipe_sets_the_plugins_key(plugged, tmp_path):
    recipe = tmp_path / "toy.toml"
    recipe.write_text('crop_height = 20\ncolour = "inverted"\nepochs = 2\n')
    config = pipeline.recipe(plugged, recipe, {})
    assert type(config) is ToyConfig and (config.crop_height, config.colour, config.epochs) == (20, "inverted", 2)
    recipe.write_text("[config]\ncrop_height = 18\n")
    assert pipeline.recipe(plugged, recipe, {}).crop_height == 18
    assert pipeline.recipe(plugged, None, {}).crop_height == 24  # no recipe: the defaults' own value


def test_a_recipe_with_a_bad_or_unknown_key_names_the_file_and_the_key(plugged, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('crop_height = "tall"\n')
    with pytest.raises(CompkitError, match=r"bad.toml: config key 'crop_height' must be int"):
        pipeline.recipe(plugged, recipe, {})
    recipe.write_text("crop_heigth = 20\n")
    with pytest.raises(CompkitError, match=r"bad.toml: unknown config key\(s\) crop_heigth; valid keys: .*"
                                           r"\(ToyConfig's own: crop_height, stretch, colour\)"):
        read_toml(recipe, ToyConfig)
    with pytest.raises(CompkitError, match="crop_heigth"):
        read_toml(recipe)  # the core's keys alone
    recipe.write_text("crop_height = 20\n")
    with pytest.raises(CompkitError, match="unknown config key.*crop_height"):
        resolve(Config(), recipe, {})  # a core Config has no such key


def test_set_parses_the_plugins_keys_to_their_types():
    assert parse_sets(["crop_height=16", "stretch=2", "colour=inverted"], ToyConfig) == {
        "crop_height": 16, "stretch": 2.0, "colour": "inverted"}
    with pytest.raises(CompkitError, match=r"config key 'crop_height' must be int, got 'x'"):
        parse_sets(["crop_height=x"], ToyConfig)
    with pytest.raises(CompkitError, match=r"unknown config key 'crop_height'"):
        parse_sets(["crop_height=16"])


def test_the_cli_refuses_a_bad_or_unknown_plugin_key_naming_it(env):
    result = invoke("train", NAME, "--set", "crop_height=tall", env=env)
    assert result.exit_code == 1 and "config key 'crop_height' must be int, got 'tall'" in result.output
    result = invoke("train", NAME, "--set", "crop_heigth=16", env=env)
    assert result.exit_code == 1 and "unknown config key 'crop_heigth'" in result.output
    assert "ToyConfig's own: crop_height, stretch, colour" in result.output
    result = invoke("train", NAME, "--set", "colour=red", "--dry-run", env=env)
    assert result.exit_code == 1 and "'colour' must be one of grey, inverted, got 'red'" in result.output
    result = invoke("train", "digits", "--set", "crop_height=16", env=env)  # another competition: not its key
    assert result.exit_code == 1 and "unknown config key 'crop_height'" in result.output


def test_train_help_lists_the_plugins_keys_with_their_docs(plugged):
    result = invoke("train", "--help", env={})
    assert result.exit_code == 0
    section = result.output.split(f"{NAME}'s own keys (ToyConfig):", 1)[1]
    assert "crop_height" in section and "rows the training images are resized to" in section
    assert "colour" in section and "grey" in section


# -- training, config.json, --resume ----------------------------------------------------------------


@pytest.mark.slow
def test_set_reaches_the_transforms_and_config_json_and_resume_keeps_it(env):
    result = invoke("train", NAME, "--fold", "0", "--run-name", "r1", *fast(), "--batch-size", "16",
                    "--set", "crop_height=16", "--set", "stretch=3", env=env)
    assert result.exit_code == 0, result.output
    assert "crop_height=16*" in result.output  # shown in the config block, marked as not the default
    saved = run_config(env, "r1")
    assert (saved["crop_height"], saved["stretch"], saved["colour"]) == (16, 3.0, "grey")

    comp = pipeline.competition(NAME)
    config = training._run_config(comp, Path(env["BASE"]) / "r" / NAME / "r1", None, {})
    assert type(config) is ToyConfig and config.crop_height == 16
    root = Path(env["BASE"]) / "d" / NAME
    batch = next(iter(_build.loader(comp, pipeline.table(comp, root, "train").head(32), root, "train", config)))
    assert tuple(batch["image"].shape[-2:]) == (16, 28)  # the images the model sees follow the key

    # --resume with more epochs reads the run's config.json: the plugin key stays, without giving it again
    result = invoke("train", NAME, "--fold", "0", "--run-name", "r1", "--resume", "--epochs", "2", "--quiet",
                    env=env)
    assert result.exit_code == 0, result.output
    assert "crop_height=16*" in result.output and "epoch 2/2" in result.output
    assert run_config(env, "r1")["crop_height"] == 16 and run_config(env, "r1")["epochs"] == 2

    # another fold of the run keeps it too, and a different value is refused naming the key
    refused = invoke("train", NAME, "--fold", "1", "--run-name", "r1", "--set", "crop_height=20", env=env)
    assert refused.exit_code == 1 and "crop_height: 16 -> 20" in refused.output


@pytest.mark.slow
def test_submit_reads_the_plugins_keys_back(env):
    result = invoke("train", NAME, "--fold", "0", "--run-name", "r2", *fast(), "--batch-size", "16",
                    "--set", "crop_height=20", env=env)
    assert result.exit_code == 0, result.output
    result = invoke("submit", NAME, "--run", "r2", env=env)
    assert result.exit_code == 0, result.output
    written = pd.read_csv(next(line[6:] for line in result.output.splitlines() if line.startswith("wrote ")))
    assert len(written) == 16
