"""A full disk is one message naming the path, and no temporary or half-written file is left."""

from __future__ import annotations

import errno
import gc
import os
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from compkit import _io
from compkit.cli import cli
from compkit.errors import CompkitError

FAST = ["--epochs", "1", "--device", "cpu", "--set", "num_workers=0", "--set", "precise_bn=0",
        "--set", "model=timm/resnet10t", "--quiet"]


def test_torch_save_failing_mid_write_is_a_disk_full_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")

    def half_then_fail(obj, path):
        Path(path).write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 100")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(CompkitError, match=rf"could not write {target}: the disk is full .*free.*COMPKIT_RUNS_DIR"):
        _io.torch_save({"a": 1}, target)
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_csv_write_out_of_space_is_a_disk_full_error(tmp_path, monkeypatch):
    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    with pytest.raises(CompkitError, match=r"folds\.csv: the disk is full"):
        _io.write_csv(tmp_path / "folds.csv", pd.DataFrame({"a": [1]}))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "no")))
    with pytest.raises(PermissionError):  # other write errors are not called a full disk
        _io.write_csv(tmp_path / "folds.csv", pd.DataFrame({"a": [1]}))


@pytest.fixture
def tiny_disk(tmp_path):
    """A 24 MiB tmpfs (needs the right to mount: skipped without it)."""
    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here: " + made.stderr.decode(errors="replace").strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk, leave: int = 0) -> None:
    """Fill ``disk`` (appending to one filler file until the disk refuses), then free ``leave`` bytes."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as handle:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))


def leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith(".")
                  and (p.name.endswith(".tmp") or ".demo-" in p.name))


def test_a_real_full_disk_under_train_demo_folds_and_submit(tiny_disk, tmp_path):
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r"),
           "COMPKIT_SUBMISSIONS_DIR": str(tiny_disk / "s")}
    runner = CliRunner()
    assert runner.invoke(cli, ["download", "digits", "--demo"], env=env).exit_code == 0
    assert runner.invoke(cli, ["train", "digits", "--fold", "0", "--run-name", "a", *FAST], env=env).exit_code == 0

    fill(tiny_disk, leave=64 * 1024)  # room for the run's small files, not for a checkpoint
    result = runner.invoke(cli, ["train", "digits", "--fold", "0", "--run-name", "b", *FAST,
                                 "--runs-dir", str(tiny_disk / "r")], env=env)
    assert result.exit_code == 1, result.output
    assert f"could not write {tiny_disk / 'r' / 'digits' / 'b' / 'fold0'}" in result.output
    assert "the disk is full" in result.output and "Traceback" not in result.output
    assert leftovers(tiny_disk) == []
    del result  # its traceback holds torch's writer, whose open file still holds blocks
    gc.collect()

    os.truncate(tiny_disk / "filler", 0)
    fill(tiny_disk, leave=4096)
    result = runner.invoke(cli, ["download", "digits", "--demo", "--data-dir", str(tiny_disk / "d")], env=env)
    assert result.exit_code == 1 and f"could not write {tiny_disk / 'd' / 'digits'}: the disk is full" in result.output
    assert leftovers(tiny_disk) == [] and not (tiny_disk / "d" / "digits").exists()

    fill(tiny_disk)
    result = runner.invoke(cli, ["submit", "digits", "--run-name", "a", "--device", "cpu"], env=env)
    assert result.exit_code == 1 and "the disk is full" in result.output, result.output
    assert not list((tiny_disk / "s").rglob("*.*"))  # neither a CSV nor its sidecar, not even a claim
