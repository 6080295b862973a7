"""compkit runs NAME: one row per run from the files training and submitting leave (no training here), its
CV from the finished folds' out-of-fold predictions, and --diff between two runs' configs."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import accuracy_score

from compkit.cli import cli
from compkit.config import Config

STAMPED = "20261122-140000"
NAMED = "baseline"
NAMED_DATE = datetime.datetime(2026, 11, 1, 9, 30)


def write_fold(run_dir, k, rows, seed, finished=True):
    """fold<K>/ as the Engine leaves it: oof.npz (float16 probabilities, int targets), metrics.csv and, for a
    finished fold, fold.json; returns the fold's accuracy on its OOF."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 10, rows)
    probabilities = rng.random((rows, 10))
    probabilities[np.arange(rows), targets] += rng.random(rows) * 1.2  # right about two thirds of the time
    probabilities = (probabilities / probabilities.sum(1, keepdims=True)).astype(np.float16)
    fold_dir = run_dir / f"fold{k}"
    fold_dir.mkdir(parents=True)
    np.savez(fold_dir / "oof.npz", ids=np.arange(rows).astype(str), probabilities=probabilities,
             targets=targets)
    score = accuracy_score(targets, probabilities.astype(np.float32).argmax(1))
    history = [score - 0.2, score, score - 0.1]
    header = "epoch,train_loss,valid_loss,accuracy,lr,seconds,images_per_second\n"
    (fold_dir / "metrics.csv").write_text(header + "".join(
        f"{epoch},0.5,0.6,{value},0.001,1.0,100.0\n" for epoch, value in enumerate(history, 1)))
    if finished:
        (fold_dir / "fold.json").write_text(json.dumps({
            "metric": "accuracy", "best_score": score, "best_epoch": 2, "epochs_run": 3,
            "stopped_early": False, "epochs": 3}))
    return {"score": score, "targets": targets, "probabilities": probabilities}


def write_sidecar(folder, stamp, run, leaderboard=None):
    folder.mkdir(parents=True, exist_ok=True)
    sidecar = {"competition": "digits", "run": run, "folds": [0, 1], "cv_score": 0.6, "metric": "accuracy"}
    if leaderboard is not None:
        sidecar["leaderboard"] = leaderboard
    (folder / f"{stamp}.json").write_text(json.dumps(sidecar))


@pytest.fixture
def work(tmp_path):
    """Two runs of digits: STAMPED (folds 0, 1 finished, fold 2 interrupted, fold 3 just started, a
    full-data model, two submissions with leaderboard scores) and NAMED (older, one fold, another config)."""
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r"),
           "COMPKIT_SUBMISSIONS_DIR": str(tmp_path / "s")}
    runs = tmp_path / "r" / "digits"
    stamped, named = runs / STAMPED, runs / NAMED
    stamped.mkdir(parents=True)
    config = Config().replace(model="timm/resnet18", image_size=28, epochs=10)
    (stamped / "config.json").write_text(config.to_json())
    folds = [write_fold(stamped, 0, 50, seed=0), write_fold(stamped, 1, 37, seed=1),
             write_fold(stamped, 2, 40, seed=2, finished=False)]
    (stamped / "fold3").mkdir()
    (stamped / "full").mkdir()
    (stamped / "full" / "last.pt").write_bytes(b"weights")
    named.mkdir()
    config = Config().replace(model="timm/resnet10t", image_size=28, epochs=30, lr=3e-4).to_dict()
    del config["mixup"]  # a config saved before the key existed: it ran with the default
    (named / "config.json").write_text(json.dumps(config))
    folds.append(write_fold(named, 0, 30, seed=3))
    for path in (named / "config.json", named):
        os.utime(path, (NAMED_DATE.timestamp(), NAMED_DATE.timestamp()))
    (runs / ".locks").mkdir()  # what training keeps beside the runs: not a run
    (runs / "latest").symlink_to(STAMPED, target_is_directory=True)
    subs = tmp_path / "s" / "digits"
    write_sidecar(subs, "20261123-100000", STAMPED, {"public": 0.95, "private": 0.94})
    write_sidecar(subs, "20261123-110000", STAMPED, {"public": "0.97", "private": None})  # Kaggle's strings
    write_sidecar(subs, "20261123-120000", "another-run", {"public": 0.99})
    (subs / "20261123-130000.json").write_text("{half a sidecar")  # unreadable: left out
    return tmp_path, env, folds


def invoke(env, *args):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def parse_table(output):
    """{run: {column: cell}} from the aligned table, cut at the header's column starts (a cell may be
    empty)."""
    lines = output.rstrip("\n").splitlines()
    header, rows = lines[0], [line for line in lines[1:] if not line.startswith("*")]
    spans = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    table = {}
    for line in rows:
        cells = {name: line[start:spans[i + 1][0] if i + 1 < len(spans) else None].strip()
                 for i, (start, name) in enumerate(spans)}
        table[cells["run"]] = cells
    return [name for _, name in spans], table, lines


def test_table_has_one_row_per_run_sorted_by_date_with_folds_cv_full_and_submissions(work):
    _, env, folds = work
    result = invoke(env, "runs", "digits")
    assert result.exit_code == 0, result.output
    columns, table, lines = parse_table(result.output)
    assert columns == ["run", "date", "model", "size", "epochs", "fold0", "fold1", "fold2", "fold3",
                       "cv accuracy", "full", "subs", "best public"]
    assert list(table) == [NAMED, STAMPED]  # by date: the named run's config.json is older than the stamp
    new, old = table[STAMPED], table[NAMED]
    assert new["date"] == "2026-11-22 14:00" and old["date"] == "2026-11-01 09:30"
    assert (new["model"], new["size"], new["epochs"]) == ("timm/resnet18", "28", "10")
    assert new["fold0"] == f"{folds[0]['score']:.5f}" and new["fold1"] == f"{folds[1]['score']:.5f}"
    assert new["fold2"] == f"{folds[2]['score']:.5f}*"  # metrics.csv's best so far, marked unfinished
    assert new["fold3"] == "-*"  # started, no epoch yet
    pooled = np.concatenate([folds[0]["targets"], folds[1]["targets"]])
    predicted = np.concatenate([folds[0]["probabilities"], folds[1]["probabilities"]]).argmax(1)
    assert new["cv accuracy"] == f"{accuracy_score(pooled, predicted):.5f} (0,1)"  # finished folds only
    assert (new["full"], new["subs"], new["best public"]) == ("yes", "2", "0.97000")
    assert old["fold0"] == f"{folds[3]['score']:.5f}" and old["fold1"] == old["fold2"] == ""
    assert old["cv accuracy"] == f"{folds[3]['score']:.5f}"  # every fold in it: no fold list
    assert (old["full"], old["subs"], old["best public"]) == ("no", "0", "-")
    assert lines[-1].startswith("* unfinished fold")


def test_cv_pools_the_finished_folds_and_agrees_with_submit(work):
    from compkit import registry
    from compkit.pipeline import submitting

    path, env, folds = work
    result = invoke(env, "runs", "digits", "--json")
    row = {row["run"]: row for row in json.loads(result.output)}[STAMPED]
    targets = np.concatenate([folds[0]["targets"], folds[1]["targets"]])
    probabilities = np.concatenate([folds[0]["probabilities"], folds[1]["probabilities"]])
    expected = accuracy_score(targets, probabilities.argmax(1))
    assert row["cv"] == pytest.approx(expected) and row["cv_folds"] == [0, 1]
    mean = (folds[0]["score"] + folds[1]["score"]) / 2
    assert row["cv"] != pytest.approx(mean)  # pooled over the rows, not a mean of the folds
    comp = registry.get().competition("digits")
    assert row["cv"] == submitting.cross_validation(comp, path / "r" / "digits" / STAMPED, [0, 1])["score"]


def test_json_has_the_rows_of_the_table(work):
    _, env, _ = work
    rows = json.loads(invoke(env, "runs", "digits", "--json").output)
    _, table, _ = parse_table(invoke(env, "runs", "digits").output)
    assert [row["run"] for row in rows] == list(table)
    for row in rows:
        cells = table[row["run"]]
        assert row["date"].replace("T", " ")[:16] == cells["date"]
        assert (row["model"], str(row["image_size"]), str(row["epochs"])) == (cells["model"], cells["size"],
                                                                                cells["epochs"])
        for entry in row["folds"]:
            shown = "-" if entry["score"] is None else f"{entry['score']:.5f}"
            assert cells[f"fold{entry['fold']}"] == shown + ("" if entry["finished"] else "*")
        assert cells["cv accuracy"].split()[0] == f"{row['cv']:.5f}"
        assert cells["full"] == ("yes" if row["full"] else "no") and cells["subs"] == str(row["submissions"])
    new = {row["run"]: row for row in rows}[STAMPED]
    assert new["best_public"] == 0.97 and new["metric"] == "accuracy"
    assert new["leaderboard"] == [{"stamp": "20261123-100000", "cv": 0.6, "public": 0.95, "private": 0.94},
                                  {"stamp": "20261123-110000", "cv": 0.6, "public": 0.97, "private": None}]


def test_diff_lists_exactly_the_keys_that_differ(work):
    _, env, _ = work
    result = invoke(env, "runs", "digits", "--diff", NAMED, STAMPED)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["key", NAMED, STAMPED]
    assert [line.split() for line in lines[1:]] == [["epochs", "30", "10"], ["lr", "0.0003", "0.001"],
                                                    ["model", "timm/resnet10t", "timm/resnet18"]]
    data = json.loads(invoke(env, "runs", "digits", "--diff", NAMED, "latest", "--json").output)
    assert data["differences"] == [{"key": "epochs", "a": 30, "b": 10}, {"key": "lr", "a": 3e-4, "b": 1e-3},
                                   {"key": "model", "a": "timm/resnet10t", "b": "timm/resnet18"}]
    same = invoke(env, "runs", "digits", "--diff", STAMPED, STAMPED)
    assert same.exit_code == 0 and "same config" in same.output


def test_diff_with_an_unknown_run_names_the_runs_there_are(work):
    _, env, _ = work
    result = invoke(env, "runs", "digits", "--diff", STAMPED, "nope")
    assert result.exit_code == 1
    assert "no run 'nope'" in result.output and f"runs: {STAMPED}, {NAMED}\n" in result.output  # not .locks


def test_no_runs_says_how_to_train_one(tmp_path):
    env = {"COMPKIT_RUNS_DIR": str(tmp_path / "r"), "COMPKIT_SUBMISSIONS_DIR": str(tmp_path / "s")}
    result = invoke(env, "runs", "digits")
    assert result.exit_code == 1 and "compkit train digits --fold 0" in result.output


def test_the_table_loads_no_torch(work):
    _, env, _ = work
    script = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from compkit.cli import cli
        result = CliRunner().invoke(cli, ["runs", "digits"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        print("torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
