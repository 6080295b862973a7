"""``compkit pack``: a run's chosen folds as a folder ready to be a Kaggle dataset, for offline notebooks.

Code competitions run a notebook without internet against hidden test data; the notebook's code
and weights come from datasets. A pack holds everything ``compkit submit`` needs, and nothing else::

    pack.json                what it holds: competition, run, folds, TTA, code versions
    dataset-metadata.json    the kaggle client's dataset metadata (title, id, licenses)
    requirements.txt         the third-party packages compkit and the plugin need, as installed here
    wheels/                  compkit and the competition's plugin, built from their sources here
    NAME/<run>/              a run folder that ``compkit submit --runs-dir <pack>`` reads:
        config.json, packed.json, postprocess.json (segmentation),
        fold<K>/best.pt (weights only: the model, or its EMA), fold<K>/fold.json
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from compkit import _io, console, places, registry
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _common, submitting
from compkit.pipeline._common import DONE, competition
from compkit.places import Places

PACK_FILE = "pack.json"
PACKED_FILE = submitting.PACKED  # in the packed run folder: the CV recorded when packing (no oof.npz)
METADATA_FILE = "dataset-metadata.json"
NO_USER = "YOUR-KAGGLE-USERNAME"
LICENSE = "CC0-1.0"
SLUG_LENGTH = (6, 50)  # what the kaggle client accepts for a dataset's slug and title


def pack(name: str, where: Places, *, run: str | None = None, fold_spec: str = "all", half: bool = False,
         out: str | os.PathLike | None = None, force: bool = False, upload: bool = False,
         message: str | None = None) -> Path:
    """Write the pack of ``run``'s folds (default packs/NAME/<run>/) and return its folder.

    It is built in a staging folder beside the target and renamed into place, so a failed pack leaves
    nothing; an existing pack is replaced only with ``force``. ``upload`` then creates the Kaggle
    dataset, or a new version of it.
    """
    comp = competition(name)
    runs_root = where.runs / name
    run = places.resolve_run(runs_root, run)
    run_dir = runs_root / run
    folds, full = _common.choose_models(run_dir, fold_spec)
    records = {f"fold{k}": record for k, record in _common.fold_records(run_dir, folds, allow_unfinished=False).items()}
    if full:
        records["full"] = _common.full_record(run_dir, allow_unfinished=False)
    models = ",".join([str(k) for k in folds] + (["full"] if full else []))  # submit's --folds
    target = Path(out) if out else Path("packs") / name / run
    api = _api() if upload else None  # no credentials: say so before building anything
    user = api.get_config_value("username") if api is not None else _user()
    sources = _sources(comp)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _io.locked(target.with_name(f".{target.name}.lock")):
        if target.exists() and not force:
            raise CompkitError(f"{target} already exists; pass --force to replace it, or --out another folder")
        _io.remove_stale_staging(target, "pack")  # left by a killed pack
        with _io.staging(target, "pack") as staging:
            _write_run(comp, run_dir, staging / name / run, folds, records, half)
            _build_wheels(sources, staging / "wheels")
            (staging / "requirements.txt").write_text(requirements(list(sources)), encoding="utf-8")
            info = {"competition": name, "kaggle": comp.kaggle, "run": run, "folds": models,
                    "tta": _config(run_dir, comp).tta, "half": half, "distributions": list(sources),
                    "code_version": submitting.code_version(comp),
                    "source": str(run_dir.resolve()),
                    "written": datetime.datetime.now().isoformat(timespec="seconds")}
            (staging / PACK_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            metadata = dataset_metadata(user, name, run)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
            _replace(staging, target)
    console.echo(f"packed {name} run {run}, folds {models}{' (float16)' if half else ''}: "
                 f"{target} ({human_size(folder_size(target))})")
    if user == NO_USER:
        console.note(f"no Kaggle username found (KAGGLE_USERNAME or kaggle.json): set \"id\" in {target / METADATA_FILE} "
                     "before uploading it yourself")
    if api is not None:
        upload_pack(target, message or f"compkit {name} run {run}, folds {models}", api=api)
    return target


# -- the run folder ---------------------------------------------------------------------------------


def _config(run_dir: Path, comp: Competition) -> Config:
    from compkit import runs

    return runs.run_config(run_dir, comp)


def _write_run(comp: Competition, run_dir: Path, out: Path, folds: list[int], records: dict[str, Any],
               half: bool) -> None:
    """The packed run folder: config, the CV recorded now, the post-processing submit would choose for
    these folds (segmentation) and each model's weights and training record."""
    out.mkdir(parents=True)
    shutil.copyfile(run_dir / "config.json", out / "config.json")
    cv: dict[str, Any] = {"score": None, "folds": {}}
    if folds:
        cv = submitting.cross_validation(comp, run_dir, folds)
        packed = {"folds": folds, "metric": comp.metric, "cv_score": cv["score"], "fold_scores": cv["folds"],
                  "half": half}
        (out / PACKED_FILE).write_text(json.dumps(packed, indent=2, default=float) + "\n", encoding="utf-8")
    if comp.kind.searches_postprocess:
        params = submitting._postprocess(comp, _config(run_dir, comp), run_dir, cv)
        (out / "postprocess.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    for model, record in records.items():
        (out / model).mkdir()
        (out / model / DONE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        weights_only(run_dir / model / "best.pt", out / model / "best.pt", half=half)


def weights_only(source: Path, target: Path, *, half: bool = False) -> None:
    """A small checkpoint that ``Engine.load`` reads like a best.pt: the weights it would load (the
    EMA's when saved) as ``model``, and the metadata; ``half`` stores floating tensors as float16."""
    import torch

    from compkit.engine import _read_checkpoint

    checkpoint = _read_checkpoint(source)
    weights = checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"]
    if half:
        weights = {key: value.half() if value.is_floating_point() else value for key, value in weights.items()}
    kept = {key: checkpoint[key] for key in ("format", "epoch", "step", "metric", "higher_is_better",
                                             "best_score", "best_epoch", "config") if key in checkpoint}
    torch.save({**kept, "model": weights, "ema": None, "half": half}, target)


# -- wheels and requirements ------------------------------------------------------------------------


def distributions(comp: Competition) -> list[str]:
    """The distributions a notebook installs for ``comp``: compkit, then the plugin that registers it."""
    reg = registry.get()
    plugin = reg.manager.plugins.get(reg.owners["competition"].get(comp.name, ""))
    names = ["compkit"]
    if plugin is not None and plugin.distribution not in names:
        names.append(plugin.distribution)
    return names


def _sources(comp: Competition) -> dict[str, Path]:
    """Each distribution to pack and the source folder (with pyproject.toml) it is installed from."""
    import compkit

    names = distributions(comp)
    files = [Path(compkit.__file__), Path(sys.modules[type(comp).__module__].__file__)][:len(names)]
    return {dist: source_dir(dist, file) for dist, file in zip(names, files)}


def source_dir(dist: str, module_file: Path) -> Path:
    """The project folder (with pyproject.toml) that ``dist``, whose top module is ``module_file``, runs from:
    an editable install, or a source checkout on the path. An install into site-packages has no source to
    build a wheel from, which is an error."""
    editable = any(json.loads(found.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable")
                   for found in importlib.metadata.distributions(name=dist))
    package = module_file.resolve().parent if module_file.name == "__init__.py" else module_file.resolve()
    installed = any(part in ("site-packages", "dist-packages") for part in package.parts)
    folder = next((parent for parent in package.parents[:2] if (parent / "pyproject.toml").is_file()), None)
    if folder is None or (installed and not editable):
        raise CompkitError(
            f"{dist} is not an editable install (pip install -e <its source folder>), so there is no source to "
            "build its wheel from: install it with pip install -e, or put its wheel in the pack's wheels/ yourself"
        )
    return folder


def _build_wheels(sources: dict[str, Path], out: Path) -> None:
    """``pip wheel --no-deps --no-build-isolation`` of each source, offline. Each build gets its own
    build and egg-info folders (a temporary setuptools config): nothing is written into the sources,
    and no file of one project leaks into another's wheel."""
    out.mkdir(parents=True)
    for dist, folder in sources.items():
        with tempfile.TemporaryDirectory(prefix="compkit-wheel-") as scratch:
            config = Path(scratch) / "setup.cfg"
            (Path(scratch) / "egg").mkdir()
            config.write_text(f"[build]\nbuild_base = {scratch}/build\n[egg_info]\negg_base = {scratch}/egg\n",
                              encoding="utf-8")
            command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                       "--quiet", "-w", str(out), str(folder)]
            result = subprocess.run(command, capture_output=True, text=True,
                                    env={**os.environ, "DIST_EXTRA_CONFIG": str(config)})
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise CompkitError(f"building the wheel of {dist} from {folder} failed (pip wheel needs setuptools "
                               f"installed here):\n{tail}")


def requirements(packed: list[str]) -> str:
    """``name==version`` for each third-party requirement of the ``packed`` distributions (not their
    extras), with the version installed here; one that is not installed here is listed bare."""
    own = {_normal(dist) for dist in packed}
    lines = {}
    for dist in packed:
        for requirement in importlib.metadata.requires(dist) or []:
            spec, _, marker = requirement.partition(";")
            if "extra" in marker:
                continue
            name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip()).group(0)
            if _normal(name) in own or _normal(name) in lines:
                continue
            try:
                lines[_normal(name)] = f"{name}=={importlib.metadata.version(name)}"
            except importlib.metadata.PackageNotFoundError:
                lines[_normal(name)] = name
    return "".join(line + "\n" for line in sorted(lines.values(), key=str.lower))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- Kaggle ---------------------------------------------------------------------------------------


def dataset_slug(name: str, run: str) -> str:
    """The dataset's slug: ``compkit-NAME-RUN`` in lower case, 6 to 50 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"compkit-{name}-{run}".lower()).strip("-")
    return slug[:SLUG_LENGTH[1]].rstrip("-")


def dataset_metadata(user: str, name: str, run: str) -> dict[str, Any]:
    """The kaggle client's dataset-metadata.json (it reads ``title``, ``id`` and ``licenses``)."""
    title = f"compkit {name} {run}"[:SLUG_LENGTH[1]].strip()
    return {"title": title, "id": f"{user}/{dataset_slug(name, run)}", "licenses": [{"name": LICENSE}]}


def _user() -> str:
    """The Kaggle username from KAGGLE_USERNAME or kaggle.json, without talking to Kaggle."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    folders = [os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    for folder in filter(None, folders):
        try:
            return json.loads((Path(folder) / "kaggle.json").read_text())["username"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return NO_USER


def _api():
    from compkit import kaggle

    return kaggle._client()


def upload_pack(folder: Path, message: str, *, api: Any = None) -> dict[str, Any]:
    """Create the Kaggle dataset of the pack in ``folder``, or a new version of it (private; folders
    are uploaded as zip archives, which Kaggle unpacks). Returns the response's ref, url and status."""
    from compkit import kaggle

    api = api or _api()
    ref = json.loads((folder / METADATA_FILE).read_text())["id"]
    if ref.startswith(f"{NO_USER}/"):
        raise CompkitError(f"{folder / METADATA_FILE} has no Kaggle username in its id ({ref}): set it")
    exists = kaggle._call({}, _dataset_exists, api, ref, doing=f"looking up dataset {ref}", retry=True)
    if exists:
        console.echo(f"uploading {folder} as a new version of dataset {ref}")
        response = kaggle._call({}, api.dataset_create_version, str(folder), message, quiet=True, dir_mode="zip",
                                doing=f"uploading a new version of dataset {ref}")
    else:
        console.echo(f"uploading {folder} as the new dataset {ref}")
        response = kaggle._call({}, api.dataset_create_new, str(folder), public=False, quiet=True, dir_mode="zip",
                                doing=f"creating dataset {ref}")
    if getattr(response, "error", None):
        raise CompkitError(f"Kaggle refused dataset {ref}: {response.error}")
    result = {"ref": getattr(response, "ref", "") or ref, "url": getattr(response, "url", ""),
              "status": str(getattr(response, "status", ""))}
    console.echo(f"uploaded dataset {result['ref']} {result['url']}".rstrip())
    return result


def _dataset_exists(api: Any, ref: str) -> bool:
    """Whether the dataset ``ref`` exists (the client raises an HTTP 404 when it does not)."""
    from requests import HTTPError

    try:
        api.dataset_status(ref)
    except HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return False
        raise
    return True


# -- helpers -----------------------------------------------------------------------------------------


def read_pack(folder: str | os.PathLike) -> dict[str, Any]:
    """The pack's pack.json with its dataset id (``dataset``) added; an error if ``folder`` is no pack."""
    folder = Path(folder)
    if not (folder / PACK_FILE).is_file():
        raise CompkitError(f"{folder} is not a pack (no {PACK_FILE}); write one with compkit pack NAME")
    info = json.loads((folder / PACK_FILE).read_text())
    metadata = folder / METADATA_FILE
    info["dataset"] = json.loads(metadata.read_text())["id"] if metadata.is_file() else None
    return info


def _replace(staging: Path, target: Path) -> None:
    """Rename ``staging`` onto ``target``; an old ``target`` is moved aside first, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.pack-old-{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
