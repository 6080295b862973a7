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
    from compkit.pipeline import _fit
    from compkit.cli import cli
    _fit.notify = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
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


def test_a_failed_start_is_said_at_once_and_leaves_no_run_folder(work):
    path, env = work
    runs = path / "r" / "digits"
    before = sorted(p.name for p in runs.iterdir())
    for args, message in ((["--device", "gpu"], "device 'gpu' is not a device name: use auto, cpu, cuda"),
                          (["--recipe", "fast"], "recipe fast is neither a file nor a recipe digits ships (it ships: demo)"),
                          (["--set", "model=timm/no-such-net"], "no-such-net"),
                          (["--set", "n_folds=3"], "folds.csv has 5 folds but n_folds=3 was asked for: remake the "
                                                   "split with compkit folds digits --n-folds 3 --force")):
        result = invoke("train", "digits", "--fold", "0", "--epochs", "1", *FAST, *args, env=env)
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in runs.iterdir()) == before  # no runs/digits/<stamp>/ holding a lone config.json


def test_later_folds_and_resumes_use_the_runs_config_and_record_what_ran(work):
    path, env = work
    run = path / "r" / "digits" / "demo-run"
    result = invoke("train", "digits", "--fold", "0", "--run-name", "demo-run", "--recipe", "demo", "--epochs", "1",
                    *FAST, env=env)
    assert result.exit_code == 0, result.output
    # another fold of that run needs no --recipe again: the run's config.json is its recipe
    result = invoke("train", "digits", "--fold", "1", "--run-name", "demo-run", "--epochs", "1", *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["warmup_epochs"] == 0.5  # the demo recipe's, kept
    result = invoke("train", "digits", "--fold", "1", "--run-name", "demo-run", "--lr", "0.5", *FAST, env=env)
    assert result.exit_code == 1 and "run demo-run was made with a different config (lr: 0.001 -> 0.5)" in result.output
    result = invoke("train", "digits", "--fold", "0", "--run-name", "demo-run", "--resume", "--epochs", "2",
                    "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["epochs"] == 2  # what was run, not the first value
    assert json.loads((run / "fold0" / "fold.json").read_text())["epochs_run"] == 2


def test_submit_refuses_an_unfinished_fold_unless_asked_and_shows_each_folds_training(work):
    path, env = work
    runs = path / "r" / "digits"
    (runs / "first" / "fold0" / "fold.json").rename(runs / "first" / "fold0" / "kept.json")  # as after a kill
    result = invoke("submit", "digits", "--run-name", "first", "--device", "cpu", env=env)
    assert result.exit_code == 1
    assert "fold(s) [0] of run first did not finish training" in result.output and "--allow-unfinished" in result.output
    assert not (path / "s").exists()
    result = invoke("submit", "digits", "--run-name", "first", "--device", "cpu", "--allow-unfinished", env=env)
    assert result.exit_code == 0 and "fold 0: " in result.output and "(unfinished)" in result.output
    (runs / "first" / "fold0" / "kept.json").rename(runs / "first" / "fold0" / "fold.json")
    result = invoke("submit", "digits", "--run-name", "first", "--device", "cpu", env=env)
    assert result.exit_code == 0 and "(best epoch 1 of 1/1)" in result.output
    (sidecar,) = [p for p in (path / "s" / "digits").glob("*.json")
                  if json.loads(p.read_text())["fold_training"]["0"] is not None]
    recorded = json.loads(sidecar.read_text())
    assert recorded["demo_data"] is True and recorded["written"][:4].isdigit()
    assert recorded["code_version"]["compkit"] and "compkit commit" in recorded["code_version"]


def test_help_lists_every_config_key_and_competitions_lists_every_competition():
    from compkit import config

    shown = invoke("train", "--help").output
    for key, doc in config.docs().items():
        assert key in shown and doc.split()[0] in shown
    assert len(config.docs()) == len(config.keys())  # every key has its one-line doc
    assert "--recipe demo" in shown and "Passes over the training folds" in shown
    lines = invoke("competitions").output.splitlines()
    assert lines[0].split() == ["name", "task", "metric", "kaggle", "demo", "recipes", "title"]
    digits = next(line for line in lines if line.startswith("digits "))
    assert digits.split()[:6] == ["digits", "classification", "accuracy", "digit-recognizer", "yes", "demo"]


def test_the_config_prints_as_a_block_marking_what_differs_from_the_defaults(work):
    _, env = work
    result = invoke("train", "digits", "--fold", "1", "--run-name", "block", "--epochs", "1", *FAST, env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("config (* = not the digits default):")
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line)
    assert 8 <= len(block) <= 20 and all(len(line) < 120 for line in block)  # a block, not one long line
    cells = " ".join(block).split()
    assert "model=timm/resnet10t*" in cells and "epochs=1*" in cells and "seed=42" in cells


def test_a_data_folder_without_its_files_says_what_to_run(tmp_path):
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r")}
    (tmp_path / "d" / "digits").mkdir(parents=True)  # what a failed first download used to leave
    result = invoke("train", "digits", "--fold", "0", env=env)
    assert result.exit_code == 1 and "no data in" in result.output and "compkit download digits" in result.output
    (tmp_path / "d" / "digits" / "test.csv").write_text("pixel0\n0\n")  # train.csv missing
    result = invoke("folds", "digits", env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "train.csv" in result.output and "compkit download digits" in result.output


def test_a_failed_first_download_leaves_no_empty_data_folder(tmp_path, monkeypatch):
    from compkit import registry
    from compkit.errors import CompkitError

    comp = registry.get().competition("digits")

    def refuse(root):
        (root / ".compkit").mkdir()  # the downloader's state folder, made before the request failed
        raise CompkitError("Kaggle rejected your credentials")

    monkeypatch.setattr(type(comp), "download", lambda self, root: refuse(root))
    result = invoke("download", "digits", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "rejected" in result.output
    assert not (tmp_path / "digits").exists()


def test_every_command_plugin_commands_included_shows_an_example():
    import click

    from compkit.cli import add_plugin_commands

    group = click.Group("compkit", commands=dict(cli.commands))
    add_plugin_commands(group)  # what `compkit` does to its group before parsing
    assert "hotdog-score" in group.commands
    for name in group.commands:
        shown = CliRunner().invoke(group, [name, "--help"], catch_exceptions=False).output
        assert "Example:" in shown and f"compkit {name}" in shown.split("Example:")[1], name


def test_init_from_starts_a_new_run_from_another_runs_best_weights(work):
    import torch

    path, env = work
    runs = path / "r" / "digits"
    for spec, message in (("nowhere", "init_from='nowhere': " + str(runs / "nowhere" / "fold0" / "best.pt")),
                          ("first/fold3", "does not exist (trained folds of first: fold0)"),
                          ("first/zero", "expected RUN or RUN/foldK")):
        result = invoke("train", "digits", "--fold", "0", "--init-from", spec, *FAST, env=env)
        assert result.exit_code == 1 and message in result.output, result.output
    # a learning rate too small to move the weights: what the run ends with is what it started from
    result = invoke("train", "digits", "--fold", "0", "--run-name", "stage2", "--init-from", "first", "--epochs", "1",
                    "--image-size", "32", "--lr", "1e-12", *FAST, env=env)
    assert result.exit_code == 0, result.output
    before = torch.load(runs / "first" / "fold0" / "best.pt", weights_only=True)["model"]
    after = torch.load(runs / "stage2" / "fold0" / "best.pt", weights_only=True)["model"]
    convolutions = [key for key, value in before.items() if value.ndim == 4]
    assert all(torch.allclose(before[key], after[key], atol=1e-6) for key in convolutions)
    assert json.loads((runs / "stage2" / "config.json").read_text())["init_from"] == "first"


def test_a_full_fit_on_all_data_and_submissions_with_it_alone_or_with_the_folds(work, monkeypatch):
    from compkit.pipeline import _fit

    path, env = work
    run = path / "r" / "digits" / "first"
    seen = {}
    real_fit = _fit.fit_fold

    def spy(comp, config, table, valid_mask, *args, **kwargs):
        seen["rows"], seen["validation"] = len(table), int(valid_mask.sum())
        return real_fit(comp, config, table, valid_mask, *args, **kwargs)

    monkeypatch.setattr(_fit, "fit_fold", spy)
    result = invoke("train", "digits", "--full", "--run-name", "first", *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert seen["validation"] == 0 and seen["rows"] == len(pd.read_csv(path / "d" / "digits" / "train.csv"))
    assert "full fit: 1 epochs, the mean best epoch of 1 finished fold(s) ([1])" in result.output
    assert "(no validation)" in result.output and "full fit (all labelled rows, no validation) done" in result.output
    assert {p.name for p in (run / "full").iterdir()} >= {"best.pt", "last.pt", "fold.json", "metrics.csv"}
    assert not (run / "full" / "oof.npz").exists()
    alone = invoke("submit", "digits", "--run-name", "first", "--folds", "full", "--device", "cpu", env=env)
    assert alone.exit_code == 0, alone.output
    assert "no CV: the full fit has no validation rows" in alone.output and "with full (tta" in alone.output
    both = invoke("submit", "digits", "--run-name", "first", "--folds", "all,full", "--device", "cpu", env=env)
    assert both.exit_code == 0 and "with fold 0, full (tta" in both.output  # one pass over the test set
    made = sorted((path / "s" / "digits").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    sidecars = [json.loads(p.read_text()) for p in made]
    assert [(s["folds"], s["full"]) for s in sidecars[-2:]] == [([], True), ([0], True)]
    result = invoke("submit", "digits", "--run-name", "demo-less", "--folds", "full", env=env)
    assert result.exit_code == 1


def test_the_baseline_is_a_random_forest_on_the_same_folds_and_metric(work):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score

    from compkit import pipeline, registry
    from compkit.pipeline import _common
    from compkit.places import Places

    path, env = work
    result = invoke("baseline", "digits", "--image-size", "8", "--trees", "50", env=env)
    assert result.exit_code == 0, result.output
    assert "baseline (random forest, 50 trees, 8x8 pixels): CV accuracy" in result.output
    where = Places(data=path / "d")
    got = pipeline.baseline("digits", where, size=8, trees=50)
    assert len(got["folds"]) == 5 and 0.8 < got["score"] <= 1  # well above chance (0.1) on real scans
    # fold 0 by hand: the same pixels, folds and forest
    from compkit import baseline

    comp = registry.get().competition("digits")
    rows, _, assignment = _common.fold_rows(comp, path / "d" / "digits", comp.defaults)
    x, y = baseline.pixels(comp, rows, path / "d" / "digits", 8)
    valid = assignment == 0
    forest = RandomForestClassifier(n_estimators=50, n_jobs=-1, random_state=42, min_samples_leaf=2)
    forest.fit(x[~valid], y[~valid])
    assert got["folds"][0] == accuracy_score(y[valid], forest.predict(x[valid]))


def test_a_dry_run_goes_through_every_file_of_a_fold_and_keeps_nothing(work, monkeypatch):
    from compkit.pipeline import _fit

    path, env = work
    runs = path / "r" / "digits"
    before = sorted(p.name for p in runs.iterdir())
    latest = os.readlink(runs / "latest")
    seen = {}
    real_fit = _fit.fit_fold

    def spy(*args, **kwargs):
        seen["out_dir"], seen["limit"] = args[5], kwargs["limit_batches"]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(_fit, "fit_fold", spy)
    result = invoke("train", "digits", "--fold", "2", "--dry-run", "--device", "cpu", "--quiet", env=env)
    assert result.exit_code == 0, result.output
    assert seen["limit"] == 2 and "epoch 1/1" in result.output and "epoch 2/" not in result.output
    assert ("wrote best.pt, curves.png, fold.json, last.pt, metrics.csv, oof.npz (removed again; nothing was kept)"
            in result.output)
    assert not seen["out_dir"].exists()  # the scratch folder is gone
    assert sorted(p.name for p in runs.iterdir()) == before and os.readlink(runs / "latest") == latest
    result = invoke("train", "digits", "--folds", "all", "--dry-run", env=env)
    assert result.exit_code == 2 and "--dry-run tries one fold" in result.output


def test_lr_find_suggests_an_lr_inside_the_range_plots_it_and_keeps_no_run(work):
    path, env = work
    runs = path / "r" / "digits"
    before = sorted(p.name for p in runs.iterdir())
    result = invoke("lr-find", "digits", "--fold", "1", "--start", "1e-6", "--end", "0.5", "--iterations", "30",
                    "--set", "device=cpu", "--set", "num_workers=0", "--set", "model=timm/resnet10t",
                    "--set", "batch_size=64", env=env)
    assert result.exit_code == 0, result.output
    suggested = float(result.output.split("suggested lr ")[1].split()[0])
    assert 1e-6 <= suggested <= 0.5
    assert (runs / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in runs.iterdir() if p.name != "lr_find.png") == before  # no run made
