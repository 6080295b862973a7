"""``compkit notebook``: the offline inference notebook for a pack (``compkit pack``), for code competitions.

It writes ``notebook.ipynb``, the same code as ``notebook.py`` (cells split at ``# %%``) and the kaggle
client's ``kernel-metadata.json``. On Kaggle the notebook installs compkit and the plugin from the pack's
wheels without internet, points compkit at the competition's data and at the pack's run, runs
``compkit submit`` with the pack's folds and TTA, and copies the file to /kaggle/working/submission.csv.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from compkit import _io, console, places
from compkit.errors import CompkitError
from compkit.pack import NO_USER, dataset_slug, read_pack
from compkit.pipeline._common import competition
from compkit.places import Places

NOTEBOOK = "notebook.ipynb"
SCRIPT = "notebook.py"
KERNEL_METADATA = "kernel-metadata.json"
CELL = "# %%"

TEMPLATE = '''"""Offline inference for {title}: compkit submit {name} --run-name {run} --folds {folds} --tta {tta}.

Written by `compkit notebook`. Reads the competition's data from KAGGLE_INPUT/{data_slug} and the pack
(dataset {dataset}) from KAGGLE_INPUT/{pack_slug}; writes KAGGLE_WORKING/submission.csv.

Environment: KAGGLE_INPUT (default /kaggle/input), KAGGLE_WORKING (/kaggle/working), COMPKIT_SCRATCH
(/tmp/compkit: links to the data and the run, caches, compkit's own submission files; kept out of the
notebook's output), COMPKIT_DEVICE (auto).
"""
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

COMPETITION = {name!r}
DATA_SLUG = {data_slug!r}
PACK_SLUG = {pack_slug!r}
RUN = {run!r}
FOLDS = {folds!r}
TTA = {tta!r}
DISTRIBUTIONS = {distributions!r}
INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
SCRATCH = Path(os.environ.get("COMPKIT_SCRATCH", "/tmp/compkit"))
DEVICE = os.environ.get("COMPKIT_DEVICE", "auto")

{cell} Install compkit and the plugin from the pack's wheels, offline (found wherever Kaggle unpacked them)
pack = INPUT / PACK_SLUG
wheel_folders = sorted({{str(path.parent) for path in pack.rglob("*.whl")}})
if not wheel_folders:
    raise SystemExit(f"no wheels under {{pack}}: add the pack's dataset to the notebook")
links = [argument for folder in wheel_folders for argument in ("--find-links", folder)]
subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *links, *DISTRIBUTIONS],
               check=True)

{cell} Third-party packages the pack was made with (requirements.txt) that this image lacks or has in another version
requirements = next(pack.rglob("requirements.txt"), None)
for line in requirements.read_text().split() if requirements else []:
    package, _, wanted = line.partition("==")
    try:
        installed = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        print(f"missing: {{package}} (the pack was made with {{wanted or 'it'}}): add its wheel to the pack")
        continue
    if wanted and installed.split("+")[0] != wanted.split("+")[0]:
        print(f"note: {{package}} {{installed}} here, {{wanted}} where the pack was made")

{cell} The competition's data as compkit's data folder: links in a writable folder (plugins write caches there)
data = SCRATCH / "data" / COMPETITION
data.mkdir(parents=True, exist_ok=True)
for entry in sorted((INPUT / DATA_SLUG).iterdir()):
    if not os.path.lexists(data / entry.name):
        (data / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())

{cell} Predict with the pack's run (linked as compkit's runs folder): compkit submit, then submission.csv
configs = sorted(pack.rglob("config.json"))
run_dir = next((path.parent for path in configs if path.parent.name == RUN), configs[0].parent if configs else None)
if run_dir is None:
    raise SystemExit(f"no run under {{pack}}: add the pack's dataset to the notebook")
runs = SCRATCH / "runs" / COMPETITION
runs.mkdir(parents=True, exist_ok=True)
if os.path.lexists(runs / RUN):
    (runs / RUN).unlink()  # a link from an earlier session may name another pack
(runs / RUN).symlink_to(run_dir, target_is_directory=True)
environment = {{**os.environ, "COMPKIT_DATA_DIR": str(SCRATCH / "data"), "COMPKIT_RUNS_DIR": str(SCRATCH / "runs"),
               "COMPKIT_SUBMISSIONS_DIR": str(SCRATCH / "submissions")}}
subprocess.run([sys.executable, "-m", "compkit", "submit", COMPETITION, "--run-name", RUN, "--folds", FOLDS,
                "--tta", TTA, "--device", DEVICE], env=environment, check=True)
written = max((SCRATCH / "submissions" / COMPETITION).glob("*.csv"), key=lambda path: path.stat().st_mtime)
WORKING.mkdir(parents=True, exist_ok=True)
shutil.copyfile(written, WORKING / "submission.csv")
print(f"wrote {{WORKING / 'submission.csv'}} ({{written.name}})")
'''


def notebook(name: str, where: Places, *, run: str | None = None, pack_dir: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, push: bool = False) -> Path:
    """Write the notebook of a pack (default packs/NAME/<run>) into ``out`` (default notebooks/NAME/<run>)."""
    comp = competition(name)
    if not comp.kaggle:
        raise CompkitError(f"{name} is not a Kaggle competition (no slug): there is no notebook to run it")
    if pack_dir is None:
        run = places.resolve_run(where.runs / name, run)
        pack_dir = Path("packs") / name / run
        if not (pack_dir / "pack.json").is_file():
            raise CompkitError(f"no pack at {pack_dir}: write it first with compkit pack {name} --run-name {run}")
    info = read_pack(pack_dir)
    if info["competition"] != name or (run and run != places.LATEST and run != info["run"]):
        raise CompkitError(f"{pack_dir} packs {info['competition']} run {info['run']}, not {name}"
                           + (f" run {run}" if run else ""))
    out = Path(out) if out else Path("notebooks") / name / info["run"]
    script = render(info, comp.kaggle)
    api = None
    if push:
        from compkit.pack import _api

        api = _api()
    user = api.get_config_value("username") if api is not None else (info["dataset"] or NO_USER).split("/")[0]
    _io.write_text(out / SCRIPT, script)
    _io.write_text(out / NOTEBOOK, json.dumps(to_notebook(script), indent=1) + "\n")
    _io.write_text(out / KERNEL_METADATA, json.dumps(kernel_metadata(info, comp.kaggle, user), indent=2) + "\n")
    console.echo(f"wrote {out / NOTEBOOK} and {out / SCRIPT} (pack {pack_dir}, dataset {info['dataset']})")
    if api is not None:
        push_notebook(out, api=api)
    return out


def render(info: dict[str, Any], data_slug: str) -> str:
    """The notebook's code as one script, cells marked ``# %%``."""
    dataset = info["dataset"] or f"{NO_USER}/{dataset_slug(info['competition'], info['run'])}"
    return TEMPLATE.format(
        title=f"compkit {info['competition']} {info['run']}", name=info["competition"], run=info["run"],
        folds=info["folds"], tta=info["tta"], data_slug=data_slug, pack_slug=dataset.split("/", 1)[1],
        dataset=dataset, distributions=info["distributions"], cell=CELL,
    )


def to_notebook(script: str) -> dict[str, Any]:
    """An nbformat 4 notebook: a markdown cell from the script's docstring, then its code, one cell per ``# %%``."""
    _, docstring, code = script.split('"""', 2)
    parts = re.split(rf"\n(?={re.escape(CELL)} )", code.strip())
    cells = [_cell("markdown", docstring.strip(), 0)]
    cells += [_cell("code", part.strip(), number) for number, part in enumerate(parts, start=1)]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}}}


def _cell(kind: str, text: str, number: int) -> dict[str, Any]:
    lines = text.splitlines(keepends=True)
    cell = {"cell_type": kind, "id": f"cell-{number}", "metadata": {}, "source": lines}
    if kind == "code":
        cell |= {"execution_count": None, "outputs": []}
    return cell


def kernel_metadata(info: dict[str, Any], data_slug: str, user: str) -> dict[str, Any]:
    """The kaggle client's kernel-metadata.json: a private notebook without internet on the pack and the data."""
    slug = dataset_slug(info["competition"], info["run"])
    return {"id": f"{user}/{slug}", "title": f"compkit {info['competition']} {info['run']}", "code_file": NOTEBOOK,
            "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
            "enable_internet": False, "dataset_sources": [info["dataset"]] if info["dataset"] else [],
            "competition_sources": [data_slug], "kernel_sources": [], "model_sources": []}


def push_notebook(folder: Path, *, api: Any = None) -> dict[str, Any]:
    """Push the notebook in ``folder`` through the kaggle client (a new version; Kaggle runs it)."""
    from compkit import kaggle
    from compkit.pack import _api

    api = api or _api()
    ref = json.loads((folder / KERNEL_METADATA).read_text())["id"]
    response = kaggle._call({}, api.kernels_push, str(folder), doing=f"pushing notebook {ref}")
    if getattr(response, "error", None):
        raise CompkitError(f"Kaggle refused notebook {ref}: {response.error}")
    result = {"ref": getattr(response, "ref", "") or ref, "url": getattr(response, "url", ""),
              "version": getattr(response, "version_number", None)}
    console.echo(f"pushed notebook {result['ref']} (version {result['version']}) {result['url']}".rstrip())
    return result
