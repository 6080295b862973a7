"""Logging plugins: compkit-tensorboard and compkit-wandb on tiny digits-demo runs, and the fit hooks
(on_fit_start, on_epoch_end with run_dir and config, on_fit_end also after a Ctrl-C) they rely on."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import compkit_tensorboard
import compkit_wandb
from compkit import hookimpl, pipeline, plugins, registry
from compkit.cli import cli
from compkit.errors import CompkitError
from compkit.pipeline import _fit
from compkit.places import Places

TINY = {"epochs": 2, "batch_size": 8, "device": "cpu", "num_workers": 0, "model": "timm/resnet10t",
        "precise_bn": 0}
FAKE_KEY = "0123456789abcdef0123456789abcdef0f1e2d3c"  # a W&B-shaped API key that must never surface


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    result = CliRunner().invoke(cli, ["download", "digits", "--demo"], env={"COMPKIT_DATA_DIR": str(data)},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    """W&B off unless a test turns it on, whatever this machine's W&B setup."""
    monkeypatch.setenv("COMPKIT_WANDB", "0")


def train(data: Path, runs: Path, run: str = "one", **overrides) -> Path:
    """Fold 0 of the digits demo for two epochs of one 8-image batch; returns the fold folder."""
    where = Places(data, runs, runs.parent / "submissions")
    return pipeline.train("digits", 0, where, overrides={**TINY, **overrides}, run=run, quiet=True, limit_batches=1)


@pytest.fixture
def plug():
    """``plug(name, plugin)`` adds a plugin to the process's manager, taken out again after the test."""
    manager = registry.get().manager
    added = []

    def add(name, plugin):
        manager.add(name, plugin, f"compkit-{name}", "0")
        assert not manager.plugins[name].error, manager.plugins[name].error
        added.append(name)

    yield add
    for name in added:
        manager.pm.unregister(name=name)
        manager.plugins.pop(name)
        manager._warned.discard(name)


class Recorder:
    """Every fit hook, recorded; on_epoch_end in the old four-argument form still gets called."""

    def __init__(self, interrupt_at=None):
        self.calls, self.interrupt_at = [], interrupt_at

    @hookimpl
    def on_fit_start(self, competition, fold, run_dir, config):
        self.calls.append(("start", competition.name, fold, run_dir, config))

    @hookimpl
    def on_epoch_end(self, competition, fold, epoch, metrics):
        self.calls.append(("epoch", epoch, metrics))
        if epoch == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, while a hook runs

    @hookimpl
    def on_fit_end(self, competition, fold, run_dir, result, error):
        self.calls.append(("end", fold, run_dir, result, error))


class Raiser:
    @hookimpl
    def on_fit_start(self):
        raise RuntimeError("no writer today")

    @hookimpl
    def on_epoch_end(self, metrics, run_dir, config):
        raise RuntimeError("disk says no")

    @hookimpl
    def on_fit_end(self, result):
        raise SystemExit(3)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Each scalar tag TensorBoard reads from ``folder``: (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_each_epoch_of_metrics_csv(data, tmp_path):
    fold = train(data, tmp_path / "runs")
    board = fold.parent / "tensorboard" / "fold0"
    assert list(board.glob("events.out.tfevents.*")) and not (fold / "tensorboard").exists()
    metrics = pd.read_csv(fold / "metrics.csv")
    logged = scalars(board)
    assert set(logged) == {"train_loss", "valid_loss", "accuracy", "lr", "seconds", "images_per_second"}
    for column, values in logged.items():
        assert [step for step, _ in values] == [1, 2], column
        assert [value for _, value in values] == pytest.approx(metrics[column].tolist(), rel=1e-6), column
    assert not compkit_tensorboard._writers  # closed at the fold's end


def fit(comp, fold: Path, epochs, accuracy: float) -> None:
    """The hooks of a fit of ``epochs``, without the training."""
    with _fit.FitHooks(comp, 0, fold, {}):
        for epoch in epochs:
            _fit.notify(comp, 0, epoch, {"epoch": epoch, "accuracy": accuracy})


def rounded(pairs):
    return [(step, round(value, 6)) for step, value in pairs]  # TensorBoard keeps float32


def test_tensorboard_a_resume_continues_the_curves_and_a_retrain_replaces_them(tmp_path):
    comp = registry.get().competition("digits")
    fold = tmp_path / "digits" / "one" / "fold0"
    board = tmp_path / "digits" / "one" / "tensorboard" / "fold0"
    fit(comp, fold, [1, 2, 3], 0.1)  # killed after logging epoch 3, its last checkpoint epoch 2
    fit(comp, fold, [3, 4], 0.2)  # --resume from epoch 3: the killed run's epoch 3 is hidden
    assert rounded(scalars(board)["accuracy"]) == [(1, 0.1), (2, 0.1), (3, 0.2), (4, 0.2)]
    fit(comp, fold, [1, 2], 0.3)  # trained again from scratch: only the new curves
    assert rounded(scalars(board)["accuracy"]) == [(1, 0.3), (2, 0.3)]
    assert len(list(board.glob("events.out.tfevents.*"))) == 3


def test_wandb_offline_run_per_fold_with_config_history_and_no_api_key(data, tmp_path, monkeypatch, capfd):
    for name, value in {"COMPKIT_WANDB": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_DIR": str(tmp_path / "w"), "WANDB_API_KEY": FAKE_KEY}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("COMPKIT_WANDB_PROJECT", raising=False)
    (tmp_path / "w").mkdir()
    fold = train(data, tmp_path / "runs", run="wb")
    (offline,) = (tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_run(offline)
    (run,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name, run.job_type) == ("compkit-digits", "wb", "fold0", "fold")
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    assert config == json.loads((fold.parent / "config.json").read_text())
    history = [{item.key or item.nested_key[0]: json.loads(item.value_json) for item in record.history.item}
               for record in records if record.WhichOneof("record_type") == "history"]
    metrics = pd.read_csv(fold / "metrics.csv")
    assert [row["epoch"] for row in history] == [1, 2]
    for row, expected in zip(history, metrics.to_dict("records")):
        assert {key: row[key] for key in expected} == pytest.approx(expected)
    summary = {item.key: json.loads(item.value_json) for record in records
               if record.WhichOneof("record_type") == "summary" for item in record.summary.update if item.key}
    assert summary["best_epoch"] == json.loads((fold / "fold.json").read_text())["best_epoch"]
    (finished,) = [record.exit for record in records if record.WhichOneof("record_type") == "exit"]
    assert finished.exit_code == 0 and not compkit_wandb._runs
    out, err = capfd.readouterr()
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert FAKE_KEY not in out + err and not [path for path in files if FAKE_KEY.encode() in path.read_bytes()]


def finished_run(path: Path, timeout_s: float = 20) -> list:
    """The records of an offline run once its exit record is in (W&B's service writes them after finish())."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(path))
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # a block's tail too short for a header is padding
            position += room
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        if position + 7 + length > len(data):  # still being written
            return
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_hooks_get_run_dir_config_and_an_end_and_old_style_on_epoch_end_still_works(data, tmp_path, plug):
    recorder = Recorder()
    plug("recorder", recorder)
    fold = train(data, tmp_path / "runs")
    (start, *epochs, end) = recorder.calls
    assert start == ("start", "digits", 0, fold, json.loads((fold.parent / "config.json").read_text()))
    assert [call[:2] for call in epochs] == [("epoch", 1), ("epoch", 2)]
    assert epochs[1][2] == pytest.approx(pd.read_csv(fold / "metrics.csv").iloc[1].to_dict())
    assert end[:3] == ("end", 0, fold) and end[3]["best_epoch"] >= 1 and end[4] is None


def test_a_failing_logger_only_warns_and_training_finishes(data, tmp_path, plug, capsys):
    plug("raiser", Raiser())
    fold = train(data, tmp_path / "runs")
    assert (fold / "fold.json").is_file() and len(pd.read_csv(fold / "metrics.csv")) == 2
    error = registry.get().manager.plugins["raiser"].error
    assert ("RuntimeError in on_fit_start: no writer today" in error and "RuntimeError in on_epoch_end: disk says no"
            in error and "SystemExit in on_fit_end" in error)
    assert "warning: compkit plugin 'raiser' (compkit-raiser) failed: RuntimeError" in capsys.readouterr().err
    assert [step for step, _ in scalars(fold.parent / "tensorboard" / "fold0")["accuracy"]] == [1, 2]  # others log


def test_ctrl_c_during_a_fit_still_ends_it_for_every_logger(data, tmp_path, plug, monkeypatch):
    monkeypatch.setenv("COMPKIT_WANDB", "1")
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    recorder = Recorder(interrupt_at=1)
    plug("recorder", recorder)
    with pytest.raises(CompkitError, match="last.pt holds epoch 1"):
        train(data, tmp_path / "runs")
    (_, epoch, end) = recorder.calls
    assert epoch[:2] == ("epoch", 1) and end[:4] == ("end", 0, tmp_path / "runs" / "digits" / "one" / "fold0", None)
    assert isinstance(end[4], CompkitError)
    assert not compkit_tensorboard._writers and not compkit_wandb._runs  # writer closed, W&B run finished
    (offline,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    (finished,) = [record.exit for record in finished_run(offline) if record.WhichOneof("record_type") == "exit"]
    assert finished.exit_code == 1  # W&B shows the fold as failed


def test_only_rank_0_calls_the_fit_hooks(plug, monkeypatch, tmp_path):
    recorder = Recorder()
    plug("recorder", recorder)
    comp = registry.get().competition("digits")
    fold = tmp_path / "digits" / "one" / "fold0"
    monkeypatch.setenv("RANK", "1")
    with _fit.FitHooks(comp, 0, fold, {}):
        _fit.notify(comp, 0, 1, {"epoch": 1, "accuracy": 0.5})
    assert recorder.calls == [] and not (tmp_path / "digits").exists()
    monkeypatch.setenv("RANK", "0")
    with _fit.FitHooks(comp, 0, fold, {"lr": 0.1}) as hooks:
        hooks.result = {"best_epoch": 1}
        _fit.notify(comp, 0, 1, {"epoch": 1, "accuracy": 0.5})
    assert [call[0] for call in recorder.calls] == ["start", "epoch", "end"]
    assert recorder.calls[0][4] == {"lr": 0.1} and recorder.calls[2][3] == {"best_epoch": 1}
    assert scalars(tmp_path / "digits" / "one" / "tensorboard" / "fold0") == {"accuracy": [(1, 0.5)]}


def test_a_plugin_with_the_old_on_epoch_end_signature_still_registers():
    manager = plugins.Manager()

    class Old:
        @hookimpl
        def on_epoch_end(self, competition, fold, epoch, metrics):
            pass

    manager.add("old", Old(), "compkit-old", "1")
    assert not manager.plugins["old"].error


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"WANDB_MODE": "offline"}, True),
    ({"WANDB_API_KEY": FAKE_KEY}, True),
    ({"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "disabled"}, False),
    ({"WANDB_MODE": "offline", "COMPKIT_WANDB": "0"}, False),
    ({"COMPKIT_WANDB": "1"}, True),
])
def test_wandb_logs_only_once_wandb_is_set_up(env, on, monkeypatch, tmp_path):
    for name in ("COMPKIT_WANDB", "WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no login here
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert compkit_wandb.enabled() is on


def test_wandb_project_and_login_detection(monkeypatch, tmp_path):
    comp = registry.get().competition("digits")
    monkeypatch.delenv("COMPKIT_WANDB_PROJECT", raising=False)
    assert compkit_wandb.project(comp) == "compkit-digits"
    monkeypatch.setenv("COMPKIT_WANDB_PROJECT", "mnist")
    assert compkit_wandb.project(comp) == "mnist"
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert compkit_wandb._logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert not compkit_wandb._logged_in()
