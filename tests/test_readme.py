"""The README stays true: its setup block, its commands and its third-party plugin all work."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from compkit import registry
from compkit.cli import cli

README = (Path(__file__).parents[1] / "README.md").read_text()


def block_after(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->``."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no block after <!-- {marker} -->"
    return match.group(1)


def test_setup_block_installs_every_first_party_plugin_and_runs_pytest():
    install, test = block_after("setup").strip().splitlines()
    plugins = sorted(p.name for p in (Path(__file__).parents[1] / "plugins").iterdir() if (p / "pyproject.toml").exists())
    assert plugins and all(f"-e plugins/{name}" in install for name in plugins)
    assert '".[test]"' in install and "pytest" in test


def test_ci_runs_the_readme_setup_commands_as_written():
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text().splitlines()
    install, test = block_after("setup").strip().splitlines()
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)


def test_every_command_in_the_readme_parses():
    lines = re.findall(r"^(compkit [^#\n]+?)\s*(?:#.*)?$", README, re.M)
    assert len(lines) >= 8
    for line in lines:
        args = shlex.split(line)[1:]
        command = cli.get_command(None, args[0])
        assert command is not None, line
        context = command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value
        if "name" in context.params:  # every competition the README uses is installed
            assert registry.get().competition(context.params["name"]).name == context.params["name"]


def install_readme_plugin(tmp_path: Path) -> Path:
    """pip-install the README's plugin from its own folder into a private site folder."""
    source = tmp_path / "compkit-flowers"
    source.mkdir()
    (source / "pyproject.toml").write_text(block_after("plugin:pyproject.toml"))
    (source / "compkit_flowers.py").write_text(block_after("plugin:compkit_flowers.py"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(source)], check=True, capture_output=True, timeout=300)
    return site


def flowers_data(root: Path) -> None:
    """Five classes told apart by colour, in the plugin's layout."""
    rng = np.random.default_rng(0)
    colours = [(255, 255, 255), (0, 220, 255), (40, 0, 220), (0, 200, 250), (200, 0, 200)]
    for k, label in enumerate(("daisy", "dandelion", "rose", "sunflower", "tulip")):
        (root / "train" / label).mkdir(parents=True)
        for i in range(6):
            image = np.clip(np.array(colours[k]) + rng.normal(0, 10, (24, 24, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "train" / label / f"{label}{i}.jpg"), image)
    (root / "test").mkdir()
    for i in range(4):
        cv2.imwrite(str(root / "test" / f"t{i}.jpg"), np.full((24, 24, 3), 128, np.uint8))
    pd.DataFrame({"id": [f"t{i}" for i in range(4)], "label": "daisy"}).to_csv(root / "sample_submission.csv", index=False)


@pytest.mark.slow
def test_the_readme_plugin_installs_from_its_folder_and_runs_end_to_end(tmp_path):
    site = install_readme_plugin(tmp_path)
    flowers_data(tmp_path / "data" / "flowers")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("COMPKIT_LOAD_PLUGINS", None)

    def compkit(*args):
        result = subprocess.run([sys.executable, "-m", "compkit", *args], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "flowers (compkit-flowers 0.1.0): competitions: flowers" in compkit("plugins")
    compkit("folds", "flowers", "--n-folds", "2")
    compkit("train", "flowers", "--fold", "0", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
            "--device", "cpu", "--set", "pretrained=false", "--set", "num_workers=0", "--quiet")
    compkit("submit", "flowers", "--device", "cpu")
    (written,) = (tmp_path / "submissions" / "flowers").glob("*.csv")
    frame = pd.read_csv(written)
    assert list(frame.columns) == ["id", "label"] and len(frame) == 4
    assert set(frame["label"]) <= {"daisy", "dandelion", "rose", "sunflower", "tulip"}


@pytest.mark.slow
def test_the_main_job_line_runs_as_written(tmp_path):
    """The README's one-line main job, verbatim, in an empty folder outside the clone."""
    (line,) = re.findall(r"^`(compkit download siim --demo && .+)`$", README, re.M)
    assert not list(tmp_path.iterdir())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (written,) = (tmp_path / "submissions" / "siim").glob("*.csv")
    frame = pd.read_csv(written)
    sample = pd.read_csv(tmp_path / "data" / "siim" / "sample_submission.csv")
    assert list(frame.columns) == list(sample.columns) and frame.iloc[:, 0].equals(sample.iloc[:, 0])
    assert "CV dice:" in result.stdout


def test_the_readme_lists_every_config_key():
    from compkit.config import keys

    (listing,) = re.findall(r"lists the valid keys:\n\n`([^`]+)`", README)
    assert listing.split() == keys()
