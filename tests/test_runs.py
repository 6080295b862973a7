"""Runs survive kills and changed splits: --resume continues the run that was killed, and a fold never
trains on a split other than the one its run started with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from click.testing import CliRunner

from compkit.cli import cli

FAST = ["--batch-size", "64", "--device", "cpu", "--set", "num_workers=0", "--quiet",
        "--set", "model=timm/resnet10t", "--set", "precise_bn=0"]

# Runs `compkit ARGS...` and SIGKILLs itself right after epoch 1's checkpoint and its callbacks: the
# moment a run that only moved `latest` when it ended would leave `latest` on the previous run.
KILLED_AFTER_EPOCH_1 = textwrap.dedent("""
    import os, signal, sys
    from compkit import _train
    from compkit.cli import cli
    _train.notify = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    cli(sys.argv[1:], prog_name="compkit")
""")


@pytest.fixture
def work(tmp_path):
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r"),
           "COMPKIT_SUBMISSIONS_DIR": str(tmp_path / "s")}
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    result = invoke("train", "digits", "--fold", "0", "--run-name", "first", "--epochs", "1", *FAST, env=env)
    assert result.exit_code == 0, result.output
    return tmp_path, env


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_resume_continues_a_run_killed_after_its_first_checkpoint(work):
    path, env = work
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EPOCH_1, "train", "digits", "--fold", "0",
                             "--run-name", "second", "--epochs", "2", *FAST],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    runs = path / "r" / "digits"
    assert len(pd.read_csv(runs / "second" / "fold0" / "metrics.csv")) == 1
    assert os.readlink(runs / "latest") == "second"  # moved with the first checkpoint
    result = CliRunner().invoke(cli, ["train", "digits", "--fold", "0", "--resume", "--device", "cpu"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output and "second" in result.output
    assert len(pd.read_csv(runs / "second" / "fold0" / "metrics.csv")) == 2
    assert len(pd.read_csv(runs / "first" / "fold0" / "metrics.csv")) == 1  # the finished run is untouched


def test_resume_refuses_to_guess_when_a_newer_run_stopped_before_its_first_checkpoint(work):
    path, env = work
    runs = path / "r" / "digits"
    # what a run killed in its first epoch leaves: its config, its fold folder, no checkpoint
    (runs / "ghost" / "fold0").mkdir(parents=True)
    shutil.copy(runs / "first" / "config.json", runs / "ghost" / "config.json")
    os.utime(runs / "ghost" / "config.json", (1e10, 1e10))
    result = invoke("train", "digits", "--fold", "0", "--resume", env=env)
    assert result.exit_code == 1
    assert "run ghost (newer than first, which 'latest' names) started fold 0 and stopped before" in result.output
    assert "--run-name ghost" in result.output and "--run-name first" in result.output
    assert len(pd.read_csv(runs / "first" / "fold0" / "metrics.csv")) == 1  # nothing was trained
    result = invoke("train", "digits", "--fold", "0", "--resume", "--run-name", "ghost", *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert (runs / "ghost" / "fold0" / "last.pt").is_file() and os.readlink(runs / "latest") == "ghost"


def test_a_run_refuses_a_fold_after_the_split_was_remade(work):
    path, env = work
    data, run = path / "d" / "digits", path / "r" / "digits" / "first"
    assert (run / "folds.csv").read_bytes() == (data / "folds.csv").read_bytes()  # kept with the run
    assert invoke("folds", "digits", "--force", "--seed", "7", env=env).exit_code == 0
    result = invoke("train", "digits", "--fold", "1", "--run-name", "first", "--epochs", "1", *FAST, env=env)
    assert result.exit_code == 1
    assert f"{data / 'folds.csv'} is not the split run first was trained on" in result.output
    assert f"cp {run / 'folds.csv'} {data / 'folds.csv'}" in result.output
    assert not (run / "fold1").exists()
    shutil.copy(run / "folds.csv", data / "folds.csv")  # the way out the message gives
    result = invoke("train", "digits", "--fold", "1", "--run-name", "first", "--epochs", "1", *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
