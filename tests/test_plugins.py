"""Plugins: discovery through entry points, failures reported by name, duplicates and typos are errors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GOOD = """
from compkit import Competition, hookimpl

class Toy(Competition):
    name = "toy"
    classes = ("a", "b")

@hookimpl
def register_competitions(register):
    register(Toy())

@hookimpl
def register_losses(register):
    register("toy-loss", lambda: None)
"""


def make_distribution(site: Path, dist: str, entry: str, module: str, code: str) -> None:
    """An installed distribution as importlib.metadata sees it: a module and a dist-info folder."""
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[compkit]\n{entry} = {module}\n")


def compkit(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("COMPKIT_LOAD_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "compkit", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    return site


def test_a_plugin_is_listed_with_version_and_registrations(site):
    make_distribution(site, "compkit-toy", "toy", "compkit_toy", GOOD)
    result = compkit(site, "plugins")
    assert result.returncode == 0, result.stderr
    assert "toy (compkit-toy 0.3.1): competitions: toy; losses: toy-loss" in result.stdout
    assert "digits (compkit-digits" in result.stdout


def test_broken_plugins_are_reported_and_the_rest_keeps_working(site, tmp_path):
    make_distribution(site, "compkit-broken", "broken", "compkit_broken", "raise ImportError('no cuda here')")
    make_distribution(site, "compkit-raiser", "raiser", "compkit_raiser", """
        from compkit import hookimpl

        @hookimpl
        def register_competitions(register):
            raise RuntimeError("boom in hook")
    """)
    result = compkit(site, "plugins")
    assert result.returncode == 0, result.stderr
    assert "broken (compkit-broken 0.3.1): FAILED: ImportError: no cuda here" in result.stdout
    assert "raiser (compkit-raiser 0.3.1): FAILED: RuntimeError in register_competitions: boom in hook" in result.stdout
    run = compkit(site, "download", "digits", "--demo", "--data-dir", str(tmp_path / "data"))
    assert run.returncode == 0, run.stderr
    assert "warning: compkit plugin 'broken'" in run.stderr and "warning: compkit plugin 'raiser'" in run.stderr
    assert (tmp_path / "data" / "digits" / "train.csv").is_file()


def test_a_misspelled_hook_is_an_error_not_silence(site):
    make_distribution(site, "compkit-typo", "typo", "compkit_typo", """
        from compkit import hookimpl

        @hookimpl
        def register_competiton(register):
            pass
    """)
    result = compkit(site, "plugins")
    assert "typo (compkit-typo 0.3.1): FAILED:" in result.stdout
    assert "register_competiton" in result.stdout and "known hooks: " in result.stdout


def test_two_plugins_registering_one_name_is_an_error_naming_both(site):
    make_distribution(site, "compkit-toy", "toy", "compkit_toy", GOOD)
    make_distribution(site, "compkit-toy2", "toy2", "compkit_toy2", GOOD)
    result = compkit(site, "folds", "toy")
    assert result.returncode != 0
    assert "registered by two plugins: toy and toy2" in result.stderr
    assert "registered by two plugins: toy and toy2" in compkit(site, "plugins").stdout


def test_unknown_competition_lists_installed_and_how_to_install(site):
    result = compkit(site, "train", "nosuch")
    assert result.returncode == 1
    assert "unknown competition 'nosuch'; installed: " in result.stderr and "digits" in result.stderr
    assert "pip install compkit-" in result.stderr and "Traceback" not in result.stderr


def test_help_and_plugin_loading_import_no_torch():
    code = ("import sys; from compkit import registry, cli; registry.get(); cli.add_plugin_commands(cli.cli); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "compkit", "--help"], capture_output=True, text=True)
    for verb in ("download", "folds", "train", "submit", "plugins"):
        assert verb in result.stdout


def test_load_plugins_variable_limits_what_loads(site):
    make_distribution(site, "compkit-toy", "toy", "compkit_toy", GOOD)
    env = {**os.environ, "PYTHONPATH": str(site), "COMPKIT_LOAD_PLUGINS": "toy"}
    result = subprocess.run([sys.executable, "-m", "compkit", "plugins"], capture_output=True, text=True, env=env)
    assert "toy (compkit-toy" in result.stdout and "digits" not in result.stdout


def test_plugin_commands_are_added_and_listed(site):
    make_distribution(site, "compkit-cmd", "cmd", "compkit_cmd", """
        import click
        from compkit import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                "Say hello."
                click.echo("hello from a plugin")
    """)
    assert compkit(site, "hello").stdout.strip() == "hello from a plugin"
    assert "cmd (compkit-cmd 0.3.1): commands: hello" in compkit(site, "plugins").stdout
