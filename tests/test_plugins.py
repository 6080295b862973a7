"""Plugins: discovery through entry points, failures reported by name, duplicates and typos are errors."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import click
import pytest

from compkit import plugins

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


def compkit(site: Path, *args: str, cwd: Path | None = None, slow_import_s: str = "1e9") -> subprocess.CompletedProcess:
    """Run the CLI with ``site``'s plugins; the slow-import warning is off unless a threshold is given."""
    env = {**os.environ, "PYTHONPATH": str(site), "COMPKIT_SLOW_IMPORT_S": slow_import_s}
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
    assert result.returncode == 1 and "Traceback" not in result.stderr
    both = "competition 'toy' is registered by two plugins: toy (compkit-toy) and toy2 (compkit-toy2)"
    assert f"Error: {both}; neither is used: uninstall one of them" in result.stderr
    assert "warning: compkit plugin 'toy'" in result.stderr and "warning: compkit plugin 'toy2'" in result.stderr
    assert both in compkit(site, "plugins").stdout


def test_a_name_clash_with_a_first_party_plugin_fails_only_the_clashing_names(site, tmp_path):
    make_distribution(site, "compkit-clash", "clash", "compkit_clash", """
        from compkit import hookimpl
        from compkit_digits import Digits

        class Mine(Digits):
            name = "mine"

        @hookimpl
        def register_competitions(register):
            register(Digits())
            register(Mine())

        @hookimpl
        def register_models(register):
            register("timm", lambda *args, **kwargs: None)
    """)
    report = compkit(site, "plugins").stdout
    assert ("competition 'digits' is registered by two plugins: clash (compkit-clash) and digits (compkit-digits)"
            in report)
    assert "model 'timm' is registered by two plugins: the compkit core and clash (compkit-clash)" in report
    assert "(still loaded: competitions: mine)" in report  # the clashing plugin's other names work
    assert re.search(r"compkit \(compkit [^)]*\): FAILED: model 'timm'.*still loaded: models: unet,", report)
    run = compkit(site, "download", "mine", "--demo", "--data-dir", str(tmp_path / "data"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "data" / "mine" / "train.csv").is_file()
    clashed = compkit(site, "download", "digits", "--demo", "--data-dir", str(tmp_path / "data"))
    assert clashed.returncode == 1 and "Traceback" not in clashed.stderr
    assert "Error: competition 'digits' is registered by two plugins" in clashed.stderr


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


def test_a_plugin_exiting_or_interrupting_at_import_fails_alone(site, tmp_path):
    make_distribution(site, "compkit-quitter", "quitter", "compkit_quitter", "import sys\nsys.exit(3)\n")
    make_distribution(site, "compkit-stopper", "stopper", "compkit_stopper", "raise KeyboardInterrupt\n")
    make_distribution(site, "compkit-toy", "toy", "compkit_toy", GOOD)
    help_ = compkit(site, "--help")
    assert help_.returncode == 0, help_.stderr
    assert "train" in help_.stdout and "Traceback" not in help_.stderr
    report = compkit(site, "plugins").stdout
    assert "quitter (compkit-quitter 0.3.1): FAILED: SystemExit: the plugin called sys.exit(3)" in report
    assert "stopper (compkit-stopper 0.3.1): FAILED: KeyboardInterrupt: raised by the plugin's own code" in report
    assert "it is not loaded (fix it, or pip uninstall compkit-stopper)" in report
    assert "toy (compkit-toy 0.3.1): competitions: toy" in report
    run = compkit(site, "download", "digits", "--demo", "--data-dir", str(tmp_path / "data"))
    assert run.returncode == 0, run.stderr
    assert "warning: compkit plugin 'quitter'" in run.stderr and "warning: compkit plugin 'stopper'" in run.stderr


def module(name: str, code: str) -> types.ModuleType:
    """A plugin module built in memory."""
    built = types.ModuleType(name)
    exec(textwrap.dedent(code), built.__dict__)
    return built


def test_system_exit_and_keyboard_interrupt_in_a_hook_are_recorded_against_the_plugin():
    manager = plugins.Manager()
    manager.add("quitter", module("quitter", """
        import sys
        from compkit import hookimpl

        @hookimpl
        def register_competitions(register):
            sys.exit(2)

        @hookimpl
        def register_commands(cli):
            raise KeyboardInterrupt
    """), "compkit-quitter", "1.0")
    for hook, kwargs in (("register_competitions", {"register": print}), ("register_commands", {"cli": None})):
        (impl,) = manager.implementations(hook)
        assert manager.run(impl, **kwargs) is False
    error = manager.plugins["quitter"].error
    assert "SystemExit in register_competitions: the plugin called sys.exit(2)" in error
    assert "KeyboardInterrupt in register_commands: raised by the plugin's own code (not Ctrl-C)" in error


def test_a_real_ctrl_c_during_a_hook_still_interrupts():
    manager = plugins.Manager()
    manager.add("slow", module("slow", """
        import signal
        from compkit import hookimpl

        @hookimpl
        def register_competitions(register):
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does, while the hook runs
    """), "compkit-slow", "1.0")
    (impl,) = manager.implementations("register_competitions")
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        manager.run(impl, register=print)
    assert signal.getsignal(signal.SIGINT) is before and manager.plugins["slow"].error is None


def test_a_hookimpl_with_wrong_argument_names_fails_alone(site):
    make_distribution(site, "compkit-args", "args", "compkit_args", """
        from compkit import hookimpl

        @hookimpl
        def register_competitions(reg):
            pass
    """)
    make_distribution(site, "compkit-toy", "toy", "compkit_toy", GOOD)
    assert compkit(site, "--help").returncode == 0
    result = compkit(site, "plugins")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("args "))
    assert line.startswith("args (compkit-args 0.3.1): FAILED: ") and "{'reg'}" in line
    assert "the spec is register_competitions(register): rename the hook's arguments to match" in line
    assert "toy (compkit-toy 0.3.1): competitions: toy" in result.stdout


def test_a_plugin_cannot_replace_or_remove_a_command():
    group = click.Group(commands=[click.Command("train"), click.Command("submit")])
    core = dict(group.commands)
    manager = plugins.Manager()
    manager.add("evil", module("evil", """
        import click
        from compkit import hookimpl

        @hookimpl
        def register_commands(cli):
            cli.add_command(click.Command("train"))
            cli.add_command(click.Command("hello"))
            del cli.commands["submit"]
    """), "compkit-evil", "1.0")
    manager.add("late", module("late", """
        import click
        from compkit import hookimpl

        @hookimpl
        def register_commands(cli):
            cli.add_command(click.Command("hello"))
    """), "compkit-late", "1.0")
    manager.add_commands(group)
    assert group.commands["train"] is core["train"] and group.commands["submit"] is core["submit"]
    evil, late = manager.plugins["evil"], manager.plugins["late"]
    assert evil.commands == ["hello"] and late.commands == []
    assert "tried to replace the command 'train' of the compkit core; refused" in evil.error
    assert "tried to remove the command 'submit' of the compkit core; refused" in evil.error
    assert "tried to replace the command 'hello' of evil (compkit-evil); refused" in late.error


def test_replacing_a_core_command_is_refused_and_plugin_commands_are_listed(site):
    make_distribution(site, "compkit-cmd", "cmd", "compkit_cmd", """
        import click
        from compkit import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def train():
                click.echo("the plugin's train")

            @cli.command()
            def hello():
                click.echo("hello from a plugin")
    """)
    train = compkit(site, "train", "--help")
    assert train.returncode == 0 and "--fold" in train.stdout and "the plugin's train" not in train.stdout
    assert compkit(site, "hello").stdout.strip() == "hello from a plugin"
    line = next(line for line in compkit(site, "plugins").stdout.splitlines() if line.startswith("cmd "))
    assert "FAILED: register_commands tried to replace the command 'train' of the compkit core" in line
    assert line.endswith("(still loaded: commands: hello)")


def test_a_slow_plugin_import_is_warned_once_naming_it(site):
    make_distribution(site, "compkit-slow", "slow", "compkit_slow", "import time\ntime.sleep(0.05)\n")
    warned = compkit(site, "--help", slow_import_s="0")  # every import is slower than 0 s
    assert warned.returncode == 0
    lines = [line for line in warned.stderr.splitlines() if "to import" in line]
    slow = [line for line in lines if line.startswith("warning: compkit plugin 'slow' (compkit-slow) took ")]
    assert len(slow) == 1 and re.search(r"took \d+\.\d s to import", slow[0]) and "inside its functions" in slow[0]
    assert "to import" not in compkit(site, "--help").stderr  # threshold 1e9: never
    code = ("import os; os.environ['COMPKIT_SLOW_IMPORT_S'] = '0'; from compkit import plugins; "
            "plugins.load(); plugins.load()")
    env = {**os.environ, "PYTHONPATH": str(site)}
    twice = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert twice.returncode == 0, twice.stderr
    assert twice.stderr.count("warning: compkit plugin 'slow'") == 1
