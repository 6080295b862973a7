"""The verbs end to end on the digits demo: places, runs, config checks, submit options, torchrun, upload."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from compkit.cli import cli

FAST = ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "--set", "num_workers=0", "--quiet",
        "--set", "model=timm/resnet10t"]


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory with the digits demo downloaded and one fold trained as run 'one'."""
    work = tmp_path_factory.mktemp("work")
    env = {"COMPKIT_DATA_DIR": str(work / "d"), "COMPKIT_RUNS_DIR": str(work / "r"),
           "COMPKIT_SUBMISSIONS_DIR": str(work / "s")}
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    result = invoke("train", "digits", "--fold", "0", "--run", "one", *FAST, env=env)
    assert result.exit_code == 0, result.output
    return work, env


def test_places_come_from_environment_variables(work):
    work, _ = work
    assert (work / "d" / "digits" / "train.csv").is_file()
    assert (work / "d" / "digits" / "folds.csv").is_file()  # train made the folds it needed
    fold = work / "r" / "digits" / "one" / "fold0"
    assert {p.name for p in fold.iterdir()} >= {"best.pt", "last.pt", "metrics.csv", "oof.npz", "curves.png"}
    assert os.readlink(work / "r" / "digits" / "latest") == "one"


def test_the_resolved_config_is_printed_and_saved(work):
    work, env = work
    result = invoke("train", "digits", "--fold", "1", "--run", "two", *FAST, "--lr", "0.01", env=env)
    assert "lr=0.01" in result.output and "epochs=1" in result.output
    saved = json.loads((work / "r" / "digits" / "two" / "config.json").read_text())
    assert saved["lr"] == 0.01 and saved["model"] == "timm/resnet10t"


def test_a_run_refuses_a_fold_with_a_different_recipe(work):
    _, env = work
    result = invoke("train", "digits", "--fold", "1", "--run", "one", *FAST, "--lr", "0.5", env=env)
    assert result.exit_code == 1 and "run one was made with a different config (lr:" in result.output


def test_bad_flags_name_the_problem(work):
    _, env = work
    result = invoke("train", "digits", "--set", "lrr=1", env=env)
    assert result.exit_code == 1 and "unknown config key 'lrr'" in result.output and "valid keys" in result.output
    result = invoke("train", "digits", "--fold", "9", *FAST, env=env)
    assert result.exit_code == 1 and "fold 9 does not exist" in result.output
    result = invoke("submit", "digits", "--run", "nope", env=env)
    assert result.exit_code == 1 and "no run 'nope'" in result.output


def test_run_name_is_the_spelling_torchrun_passes_through(work):
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "compkit", "train", "digits",
                                         "--run-name", "one"])
    assert args.training_script_args == ["train", "digits", "--run-name", "one"]
    _, env = work
    result = invoke("submit", "digits", "--run-name", "nope", env=env)
    assert result.exit_code == 1 and "no run 'nope'" in result.output
    result = invoke("submit", "digits", env={**env, "COMPKIT_RUN": "nope"})
    assert result.exit_code == 1 and "no run 'nope'" in result.output


@pytest.mark.parametrize("verb", ["train", "submit"])
def test_a_run_name_cannot_leave_the_runs_folder(work, verb):
    path, env = work
    result = invoke(verb, "digits", "--run", "../../x", *(FAST if verb == "train" else []), env=env)
    assert result.exit_code == 1 and "run name '../../x' is not allowed" in result.output
    assert not (path / "x").exists()  # runs/digits/../../x


def test_submit_writes_a_checked_file_and_a_sidecar(work):
    work, env = work
    result = invoke("submit", "digits", "--run", "one", "--folds", "0", "--tta", "hflip", "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    assert "CV accuracy:" in result.output
    (path,) = (work / "s" / "digits").glob("*.csv")
    frame = pd.read_csv(path)
    sample = pd.read_csv(work / "d" / "digits" / "sample_submission.csv")
    assert list(frame.columns) == list(sample.columns) and frame["ImageId"].equals(sample["ImageId"])
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["run"] == "one" and sidecar["folds"] == [0] and sidecar["tta"] == "hflip"
    assert 0 <= sidecar["cv_score"] <= 1 and sidecar["code_version"]["compkit-digits"] == "0.1.0"
    result = invoke("submit", "digits", "--run", "one", "--folds", "3", env=env)
    assert result.exit_code == 1 and "have no best.pt; trained folds: [0]" in result.output


def test_the_sidecar_is_written_before_its_csv_and_a_failed_submit_leaves_neither(work, monkeypatch):
    from compkit import submission

    path, env = work
    real_write = submission.write
    seen = {}

    def write(frame, csv, *args, **kwargs):
        seen["sidecar"] = json.loads(csv.with_suffix(".json").read_text())  # already there, complete
        if seen.get("fail"):
            raise KeyboardInterrupt  # as a kill between the two files would
        return real_write(frame, csv, *args, **kwargs)

    monkeypatch.setattr(submission, "write", write)
    before = set((path / "s" / "digits").glob("*"))
    result = invoke("submit", "digits", "--run", "one", "--device", "cpu", env=env)
    assert result.exit_code == 0 and seen["sidecar"]["run"] == "one"
    seen["fail"] = True
    result = CliRunner().invoke(cli, ["submit", "digits", "--run", "one", "--device", "cpu"], env=env)
    assert result.exit_code == 130
    made = set((path / "s" / "digits").glob("*")) - before
    assert sorted(p.suffix for p in made) == [".csv", ".json"]  # the first submit's pair, nothing of the second


def test_folds_refuses_a_different_split_without_force(work):
    _, env = work
    result = invoke("folds", "digits", "--n-folds", "3", env=env)
    assert result.exit_code == 1 and "--force" in result.output
    assert invoke("folds", "digits", "--n-folds", "5", "--seed", "42", env=env).exit_code == 0  # same split


def test_demo_does_not_overwrite_real_data_without_force(tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "train.csv").write_text("label\n")
    result = invoke("download", "digits", "--demo", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "already holds data" in result.output
    assert (tmp_path / "digits" / "train.csv").read_text() == "label\n"


def test_a_fold_in_training_is_not_trained_twice_at_once_and_stale_temporaries_go(work):
    from compkit import _io, pipeline

    path, env = work
    fold = path / "r" / "digits" / "one" / "fold1"
    with _io.locked(pipeline.fold_lock(path / "r" / "digits", "one", "fold1")):
        result = invoke("train", "digits", "--fold", "1", "--run", "one", *FAST, env=env)
    assert result.exit_code == 1 and f"{fold} is in use by process {os.getpid()}" in result.output
    assert not (fold / "last.pt").exists()
    fold.mkdir()
    (fold / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    result = invoke("train", "digits", "--fold", "1", "--run", "one", *FAST, env=env)
    assert result.exit_code == 0, result.output
    assert (fold / "last.pt").is_file() and not list(fold.glob(".*.tmp"))


def test_demo_staging_is_unique_cleaned_and_other_seeds_need_force(tmp_path, monkeypatch):
    stale = tmp_path / ".digits.demo-tmp"  # left by a download killed mid-write
    (stale / "half").mkdir(parents=True)
    assert invoke("download", "digits", "--demo", "--data-dir", str(tmp_path)).exit_code == 0
    assert not stale.exists() and (tmp_path / "digits" / ".demo").read_text() == "seed=0\n"
    result = invoke("download", "digits", "--demo", "--seed", "7", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "made with seed=0; pass --force to remake it with seed=7" in result.output
    from compkit_digits import Digits

    def broken(self, root, seed=0):
        (root / "train.csv").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(Digits, "make_demo", broken)
    with pytest.raises(OSError):
        invoke("download", "digits", "--demo", "--force", "--data-dir", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".digits.lock", "digits"]
    assert (tmp_path / "digits" / ".demo").read_text() == "seed=0\n"  # the old demo is kept


def test_two_demo_downloads_at_once_both_end_with_the_data(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "compkit", "download", "digits", "--demo", "--force", "--data-dir", str(tmp_path)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == [".digits.lock", "digits"]
    assert (tmp_path / "digits" / "train.csv").is_file() and (tmp_path / "digits" / ".demo").is_file()


def test_upload_goes_through_the_kaggle_client(work, monkeypatch, tmp_path):
    from tests.fake_kaggle import FakeKaggle, point_client_at

    work, env = work
    marker = work / "d" / "digits" / ".demo"
    before = set((work / "s" / "digits").glob("*"))
    fake = FakeKaggle(competitions={"digit-recognizer": {}}).start()
    try:
        point_client_at(monkeypatch, fake, tmp_path)
        submit = ("submit", "digits", "--run", "one", "--upload", "--message", "demo", "--device", "cpu")
        refused = invoke(*submit, env=env)
        assert refused.exit_code == 1 and "holds demo data: a submission made from it cannot score" in refused.output
        assert set((work / "s" / "digits").glob("*")) == before  # refused before predicting anything
        seed = marker.read_text()
        marker.unlink()  # as if the data were real
        try:
            result = invoke(*submit, env=env)
        finally:
            marker.write_text(seed)
    finally:
        fake.stop()
    assert result.exit_code == 0, result.output
    written = sorted((work / "s" / "digits").glob("*.csv"))[-1]
    assert list(fake.uploads.values()) == [written.read_bytes()]  # the bytes Kaggle got are the file's
    assert fake.created[-1]["submissionDescription"] == "demo"
    assert f"uploading {written}" in result.output and f"uploaded {written.name}: Successfully submitted" in result.output
    assert "Successfully" in json.loads(written.with_suffix(".json").read_text())["upload"]["message"]

    # compkit submissions: Kaggle's list, matched to the uploaded file's sidecar, scores saved back
    ref = json.loads(written.with_suffix(".json").read_text())["upload"]["ref"]
    fake.submissions = [
        {"ref": ref, "fileName": "renamed-by-kaggle.csv", "date": "2026-12-02T01:00:00.000Z", "status": "COMPLETE",
         "publicScore": "0.97100", "description": "demo"},
        {"ref": 99, "fileName": "from-a-notebook.csv", "date": "2026-12-01T01:00:00.000Z", "status": "ERROR"},
    ]
    fake.start()
    point_client_at(monkeypatch, fake, tmp_path)  # the new port
    try:
        listed = invoke("submissions", "digits", env=env)
    finally:
        fake.stop()
    assert listed.exit_code == 0, listed.output
    first, second = listed.output.splitlines()[1:3]
    cv = json.loads(written.with_suffix(".json").read_text())["cv_score"]
    assert "COMPLETE" in first and "0.97100" in first and " one " in first and f"{cv:.5f}" in first
    assert "ERROR" in second and " one " not in second
    assert json.loads(written.with_suffix(".json").read_text())["leaderboard"]["public"] == "0.97100"
    table = json.loads(invoke("runs", "digits", "--json", env=env).output)
    assert next(row for row in table if row["run"] == "one")["best_public"] == 0.971


@pytest.mark.slow
def test_torchrun_trains_with_two_processes(work, tmp_path):
    _, env = work
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "compkit", "train", "digits", "--fold", "2", *FAST, "--runs-dir", str(tmp_path)]
    # torchrun's parser would take --run for its own --run-path: name the run through the environment
    environment = {**os.environ, **env, "OMP_NUM_THREADS": "1", "COMPKIT_RUN": "ddp"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = pd.read_csv(tmp_path / "digits" / "ddp" / "fold2" / "metrics.csv")
    assert len(metrics) == 1  # written once, by rank 0
    oof = __import__("numpy").load(tmp_path / "digits" / "ddp" / "fold2" / "oof.npz")
    assert len(set(oof["ids"])) == len(oof["ids"]) == 288  # each validation sample exactly once


@pytest.mark.slow
def test_torchrun_trains_every_fold_of_a_run_in_one_command(tmp_path):
    env = {"COMPKIT_DATA_DIR": str(tmp_path / "d"), "COMPKIT_RUNS_DIR": str(tmp_path / "r")}
    assert invoke("download", "digits", "--demo", env=env).exit_code == 0
    assert invoke("folds", "digits", "--n-folds", "2", env=env).exit_code == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "compkit", "train", "digits", "--folds", "all", *FAST]
    environment = {**os.environ, **env, "OMP_NUM_THREADS": "1", "COMPKIT_RUN": "ddp-folds"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "run ddp-folds: CV accuracy" in result.stdout and "over folds 0, 1" in result.stdout
    for fold in (0, 1):  # one process group for both folds: the second fold does not hang joining again
        assert (tmp_path / "r" / "digits" / "ddp-folds" / f"fold{fold}" / "fold.json").is_file()


def test_torchrun_processes_agree_on_a_new_run_id(tmp_path, monkeypatch):
    from compkit import places

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    chosen = places.agreed_run_id(tmp_path, rank=0, world_size=2)
    assert places.agreed_run_id(tmp_path, rank=1, world_size=2) == chosen
