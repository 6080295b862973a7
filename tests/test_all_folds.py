"""train --folds: every fold of one run in one command, its CV at the end, and a resume after a kill
that ends with the same checkpoints as an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pandas as pd
import torch
from click.testing import CliRunner

from compkit.cli import cli

FAST = ["--epochs", "2", "--batch-size", "64", "--device", "cpu", "--quiet", "--set", "num_workers=0",
        "--set", "model=timm/resnet10t", "--set", "precise_bn=0"]

# `compkit ARGS...`, SIGKILLed right after the checkpoint of epoch 1 of fold 2
KILLED_IN_FOLD_2 = textwrap.dedent("""
    import os, signal, sys
    from compkit.pipeline import _fit
    from compkit.cli import cli
    notify = _fit.notify
    def kill_in_fold_2(comp, fold, epoch, metrics):
        if fold == 2 and epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        notify(comp, fold, epoch, metrics)
    _fit.notify = kill_in_fold_2
    cli(sys.argv[1:], prog_name="compkit")
""")


def invoke(*args, env):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_all_folds_in_one_command_and_a_resume_after_a_kill_match_an_uninterrupted_run(tmp_path):
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r")}
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    assert invoke("folds", "digits", "--n-folds", "3", env=env).exit_code == 0
    whole = invoke("train", "digits", "--folds", "all", "--run-name", "whole", *FAST, env=env)
    assert whole.exit_code == 0, whole.output
    assert "run whole: CV accuracy" in whole.output and "over folds 0, 1, 2" in whole.output
    assert whole.output.count("(best epoch") == 3

    killed = subprocess.run([sys.executable, "-c", KILLED_IN_FOLD_2, "train", "digits", "--folds", "all",
                             "--run-name", "cut", *FAST], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    runs = tmp_path / "r" / "digits"
    assert (runs / "cut" / "fold1" / "fold.json").is_file() and not (runs / "cut" / "fold2" / "fold.json").exists()
    resumed = invoke("train", "digits", "--folds", "all", "--resume", "--device", "cpu", env=env)
    assert resumed.exit_code == 0, resumed.output
    assert "run cut: fold(s) 0, 1 already finished" in resumed.output and "resuming after epoch 1" in resumed.output
    for fold in range(3):
        for name in ("best.pt", "last.pt"):
            a, b = weights(runs / "whole" / f"fold{fold}" / name), weights(runs / "cut" / f"fold{fold}" / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (fold, name)
        columns = ["epoch", "train_loss", "valid_loss", "accuracy", "lr"]
        assert pd.read_csv(runs / "whole" / f"fold{fold}" / "metrics.csv")[columns].equals(
            pd.read_csv(runs / "cut" / f"fold{fold}" / "metrics.csv")[columns])
    assert resumed.output.split("CV accuracy")[1].split()[0] == whole.output.split("CV accuracy")[1].split()[0]


def test_folds_and_fold_are_not_given_together_and_a_bad_spec_is_named(tmp_path):
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r")}
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    result = invoke("train", "digits", "--fold", "1", "--folds", "all", env=env)
    assert result.exit_code == 2 and "give one of --fold K, --folds SPEC and --full" in result.output
    for spec, message in (("0,7", "--folds 0,7: the split has folds 0..4"), ("one", "comma-separated fold numbers")):
        result = invoke("train", "digits", "--folds", spec, *FAST, env=env)
        assert result.exit_code == 1 and message in result.output
