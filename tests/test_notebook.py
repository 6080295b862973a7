"""compkit notebook: the offline inference notebook of a pack, run here as Kaggle would run it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from compkit import pipeline
from compkit.cli import cli
from compkit.errors import CompkitError
from compkit.notebook import notebook, to_notebook
from compkit.places import Places
from tests.fake_kaggle import FakeKaggle, point_client_at

FAST = {"epochs": 1, "batch_size": 64, "device": "cpu", "model": "timm/resnet10t", "precise_bn": 0, "num_workers": 0}
HIDDEN = ("compkit", "__editable__")  # the dev install of compkit and its plugins: not on Kaggle


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A digits run with folds 0 and 1 (one epoch each), its pack and its notebook."""
    root = tmp_path_factory.mktemp("packed")
    where = Places(root / "data", root / "runs", root / "submissions")
    pipeline.download("digits", where, demo=True)
    pipeline.train_folds("digits", "0,1", where, overrides=FAST, run="r1", quiet=True)
    invoke("pack", "digits", "--runs-dir", str(where.runs), "--run-name", "r1", "--out", str(root / "pack"),
           env={"KAGGLE_USERNAME": "someone"})
    result = invoke("notebook", "digits", "--runs-dir", str(where.runs), "--pack", str(root / "pack"),
                    "--out", str(root / "notebook"))
    assert f"wrote {root / 'notebook' / 'notebook.ipynb'}" in result.output
    return where, root / "pack", root / "notebook"


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_notebook_is_valid_nbformat_4_and_holds_the_script_s_code(packed):
    _, _, folder = packed
    script = (folder / "notebook.py").read_text()
    compile(script, "notebook.py", "exec")
    book = json.loads((folder / "notebook.ipynb").read_text())
    assert book == to_notebook(script) and book["nbformat"] == 4
    code = [cell for cell in book["cells"] if cell["cell_type"] == "code"]
    assert len(code) == 5 and book["cells"][0]["cell_type"] == "markdown"
    joined = "\n\n".join("".join(cell["source"]) for cell in code)
    assert joined == script.split('"""', 2)[2].strip()  # the cells are the script's code, cut at "# %%"
    assert [cell["source"][0].startswith("# %% ") for cell in code] == [False, True, True, True, True]
    assert "--no-index" in joined and "COMPKIT_RUNS_DIR" in joined and "submission.csv" in joined
    try:
        import nbformat
    except ImportError:
        return
    nbformat.validate(nbformat.reads((folder / "notebook.ipynb").read_text(), as_version=4))


def test_the_script_carries_the_pack_s_run_folds_tta_and_slugs(packed):
    _, pack, folder = packed
    script = (folder / "notebook.py").read_text()
    for line in ("COMPETITION = 'digits'", "DATA_SLUG = 'digit-recognizer'", "PACK_SLUG = 'compkit-digits-r1'",
                 "RUN = 'r1'", "FOLDS = '0,1'", "TTA = 'none'", "DISTRIBUTIONS = ['compkit', 'compkit-digits']",
                 'INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))',
                 'WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))'):
        assert line in script.splitlines(), line
    metadata = json.loads((folder / "kernel-metadata.json").read_text())
    assert metadata["id"] == "someone/compkit-digits-r1" and metadata["code_file"] == "notebook.ipynb"
    assert metadata["dataset_sources"] == [json.loads((pack / "dataset-metadata.json").read_text())["id"]]
    assert metadata["competition_sources"] == ["digit-recognizer"] and metadata["enable_internet"] is False
    assert metadata["kernel_type"] == "notebook" and metadata["language"] == "python"
    assert metadata["title"].replace(" ", "-") == metadata["id"].split("/")[1]  # the client wants them to agree


def test_a_pack_of_another_run_or_no_pack_is_an_error(packed, tmp_path):
    where, pack, _ = packed
    with pytest.raises(CompkitError, match="packs digits run r1, not digits run r2"):
        notebook("digits", where, run="r2", pack_dir=pack, out=tmp_path / "n")
    with pytest.raises(CompkitError, match="is not a pack"):
        notebook("digits", where, pack_dir=tmp_path, out=tmp_path / "n")
    with pytest.raises(CompkitError, match="not a Kaggle competition"):
        notebook("hotdog", where, pack_dir=pack, out=tmp_path / "n")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A running fake Kaggle the real client talks to."""
    server = FakeKaggle().start()
    (tmp_path / "home").mkdir()
    point_client_at(monkeypatch, server, tmp_path / "home")
    yield server
    server.stop()


def push(where, pack, out):
    return CliRunner().invoke(cli, ["notebook", "digits", "--runs-dir", str(where.runs), "--pack", str(pack),
                                    "--out", str(out), "--push"])


def test_push_saves_the_notebook_as_a_private_kernel_without_internet_on_the_pack_and_the_data(packed, fake, tmp_path):
    where, pack, _ = packed
    out = tmp_path / "notebook"
    result = push(where, pack, out)
    assert result.exit_code == 0, result.output
    slug = "fake-user/compkit-digits-r1"  # the client's username: the account it pushes to
    assert json.loads((out / "kernel-metadata.json").read_text())["id"] == slug
    assert fake.count("SaveKernel") == 1
    body = fake.kernels[0]
    assert body["slug"] == slug and body["newTitle"] == "compkit digits r1"
    assert body["kernelType"] == "notebook" and body["language"] == "python"
    assert body["datasetDataSources"] == [json.loads((pack / "dataset-metadata.json").read_text())["id"]]
    assert body["datasetDataSources"] == ["someone/compkit-digits-r1"]  # the pack's dataset, whoever made it
    assert body["competitionDataSources"] == ["digit-recognizer"]
    assert body["enableInternet"] is False and body["isPrivate"] is True and body["enableGpu"] is True
    written = json.loads((out / "notebook.ipynb").read_text())
    assert written == to_notebook((out / "notebook.py").read_text())
    for cell in written["cells"]:  # the client sends each cell's source as one string
        cell["source"] = "".join(cell["source"])
    sent = json.loads(body["text"])
    assert sent == written and len(sent["cells"]) == 6
    assert f"pushed notebook /code/{slug} (version 1) https://www.kaggle.com/code/{slug}" in result.output


def test_a_notebook_kaggle_refuses_is_a_one_line_error(packed, fake, tmp_path):
    where, pack, _ = packed
    fake.answers["SaveKernel"] = {"error": "Notebook not found or no permission to save it"}
    result = push(where, pack, tmp_path / "notebook")
    assert result.exit_code == 1 and type(result.exception) is SystemExit, result.output  # not an uncaught error
    assert result.output.splitlines()[-1] == ("Error: Kaggle refused notebook fake-user/compkit-digits-r1: "
                                              "Notebook not found or no permission to save it")
    assert "Traceback" not in result.output and fake.count("SaveKernel") == 1


def filtered_site(folder: Path) -> Path:
    """This environment's third-party packages, without compkit and its plugins (links to each entry)."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not entry.name.startswith(HIDDEN) and entry.suffix != ".pth":
            (folder / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return folder


def read_only(folder: Path, on: bool = True) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) if on else mode | stat.S_IWUSR)


@pytest.mark.slow
def test_the_script_run_offline_in_a_fresh_environment_writes_what_compkit_submit_writes(packed, tmp_path):
    """As on Kaggle: a fresh virtual environment with the third-party packages but no compkit, the data and
    the pack in read-only input folders, pip with no index; its submission.csv is compkit submit's file."""
    where, pack, folder = packed
    kaggle_input = tmp_path / "kaggle" / "input"
    shutil.copytree(where.data_root("digits"), kaggle_input / "digit-recognizer",
                    ignore=shutil.ignore_patterns(".*", "folds.csv"))  # the competition's files only
    shutil.copytree(pack, kaggle_input / "compkit-digits-r1")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    (Path(venv_site) / "third_party.pth").write_text(f"{filtered_site(tmp_path / 'third-party')}\n")
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "PIP_CONFIG_FILE": os.devnull,
                   "KAGGLE_INPUT": str(kaggle_input), "KAGGLE_WORKING": str(tmp_path / "kaggle" / "working"),
                   "COMPKIT_SCRATCH": str(tmp_path / "scratch"), "COMPKIT_DEVICE": "cpu"}
    work = tmp_path / "work"
    work.mkdir()
    probe = "import torch, timm, pandas, pluggy\ntry:\n import compkit\nexcept ImportError:\n print('no compkit')"
    before = subprocess.run([python, "-c", probe], cwd=work, env=environment, capture_output=True, text=True)
    assert before.stdout.strip() == "no compkit", before.stderr[-2000:]

    read_only(kaggle_input)
    try:
        started = time.perf_counter()
        result = subprocess.run([python, str(folder / "notebook.py")], cwd=work, env=environment,
                                capture_output=True, text=True, timeout=300)
        seconds = time.perf_counter() - started
    finally:
        read_only(kaggle_input, on=False)
    print(f"offline notebook script: {seconds:.1f} s")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Successfully installed compkit-0.1.0 compkit-digits-0.1.0" in result.stdout
    installed = subprocess.run([python, "-c", "import compkit, compkit_digits; print(compkit.__file__)"],
                               cwd=work, env=environment, capture_output=True, text=True, check=True).stdout
    assert installed.startswith(venv_site)  # the pack's wheel, not the checkout

    expected = pipeline.submit("digits", where, run="r1", fold_spec="0,1", device="cpu")
    written = tmp_path / "kaggle" / "working" / "submission.csv"
    assert written.read_bytes() == expected.read_bytes()
    assert len(written.read_text().splitlines()) > 100
    sidecars = list((tmp_path / "scratch" / "submissions" / "digits").glob("*.json"))
    assert len(sidecars) == 1 and json.loads(sidecars[0].read_text())["folds"] == [0, 1]
