"""Config: type checks, unknown keys, TOML and --set layering."""

import pytest

from compkit.config import Config, keys, parse_sets, read_toml, resolve
from compkit.errors import CompkitError


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(CompkitError, match="unknown config key.*epochs_x.*valid keys: model"):
        Config().replace(epochs_x=3)


@pytest.mark.parametrize(("key", "value"), [("epochs", "ten"), ("epochs", 2.5), ("amp", "fp8"), ("compile", 1)])
def test_wrong_types_and_choices_are_errors(key, value):
    with pytest.raises(CompkitError, match=key):
        Config().replace(**{key: value})


def test_ints_are_accepted_for_floats():
    assert Config(lr=1).lr == 1.0 and isinstance(Config(lr=1).lr, float)


def test_set_strings_are_parsed_to_the_field_type():
    assert parse_sets(["lr=0.1", "epochs=3", "compile=yes", "model=unet/resnet18"]) == {
        "lr": 0.1, "epochs": 3, "compile": True, "model": "unet/resnet18"}
    with pytest.raises(CompkitError, match="must be int"):
        parse_sets(["epochs=three"])
    with pytest.raises(CompkitError, match="key=value"):
        parse_sets(["epochs"])


def test_layers_defaults_then_toml_then_flags(tmp_path):
    recipe = tmp_path / "x.toml"
    recipe.write_text('epochs = 7\nlr = 0.01\nmodel = "timm/resnet34"\n')
    config = resolve(Config(epochs=3, batch_size=8), recipe, {"lr": 0.5, "device": None})
    assert (config.epochs, config.batch_size, config.lr, config.model) == (7, 8, 0.5, "timm/resnet34")


def test_toml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 'x'\n")
    with pytest.raises(CompkitError, match="bad.toml.*epochs"):
        resolve(Config(), bad, {})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[config]\nlearning_rate = 1\n")
    with pytest.raises(CompkitError, match="unknown.toml.*learning_rate"):
        read_toml(unknown)
    for text in ("epochs = = 3\n", "[config]\nlearning_rate = 1\n"):  # the file is named once, not twice
        unknown.write_text(text)
        with pytest.raises(CompkitError) as raised:
            resolve(Config(), unknown, {})
        assert str(raised.value).count("unknown.toml") == 1


def test_json_round_trip():
    config = Config(epochs=2, tta="d4")
    assert Config.from_dict(__import__("json").loads(config.to_json())) == config
    assert list(config.to_dict()) == keys()


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("batch_size", -4), ("image_size", 0), ("lr", -1.0),
                                        ("lr", 0.0), ("epochs", 0), ("num_workers", 100000), ("precise_bn", -1),
                                        ("n_folds", 0), ("ema", 1.5), ("gamma", 0.0)])
def test_out_of_range_values_are_errors_naming_key_and_value(key, value):
    with pytest.raises(CompkitError, match=rf"config key '{key}' must be .*got {value!r}"):
        Config().replace(**{key: value})


def test_in_range_edges_are_accepted():
    config = Config().replace(num_workers=-1, epochs=1, weight_decay=0.0, ema=0.0, momentum=1.0, n_folds=2)
    assert config.num_workers == -1 and config.n_folds == 2


def test_a_config_table_beside_top_level_keys_is_refused(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("epochs = 3\n[config]\nlr = 0.1\n")
    with pytest.raises(CompkitError, match=r"r.toml: has a \[config\] table and top-level keys \(epochs\)"):
        read_toml(path)
