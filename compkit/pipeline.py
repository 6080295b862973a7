"""One function per CLI verb: download, folds, train, submit, plugins. The CLI only parses arguments.

Each verb reads what the previous one wrote (data/NAME, runs/NAME/<run>, submissions/NAME), so
any step can be rerun alone.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from compkit import _distributed, _io, folds, places, registry
from compkit.competition import Competition
from compkit.config import Config, resolve
from compkit.errors import CompkitError
from compkit.places import Places

RUNTIME_KEYS = {"device", "num_workers", "epochs", "patience", "tta"}  # may differ between folds of a run


def echo(message: str) -> None:
    """Print to the terminal (rank 0 only under torchrun)."""
    if _distributed.is_main():
        print(message, flush=True)


def competition(name: str) -> Competition:
    """The registered competition, with failed plugins reported as warnings."""
    reg = registry.get()
    reg.manager.warn_failed()
    return reg.competition(name)


# -- download ---------------------------------------------------------------------------------


def download(name: str, where: Places, *, demo: bool = False, force: bool = False, seed: int = 0) -> Path:
    """Fetch the real data (or write the demo twin) into data/NAME; returns the folder."""
    comp = competition(name)
    root = where.data_root(name)
    if demo:
        return _make_demo(comp, root, force=force, seed=seed)
    if force and (root / ".demo").exists():
        shutil.rmtree(root)
    if (root / ".demo").exists():
        raise CompkitError(f"{root} holds demo data; pass --force to replace it with the real data")
    root.mkdir(parents=True, exist_ok=True)
    from compkit import kaggle

    with kaggle.forced(force):
        comp.download(root)
    return root


def _make_demo(comp: Competition, root: Path, *, force: bool, seed: int) -> Path:
    """Write the demo into a temporary folder, then move it into place: never half a dataset.

    One process at a time per data folder (a lock beside it); staging folders left by a killed run
    are removed, and a failed one removes its own.
    """
    with _io.locked(root.with_name(f".{root.name}.lock")):
        for stale in root.parent.glob(f".{root.name}.demo-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if root.exists() and any(root.iterdir()):
            marker = root / ".demo"
            if marker.exists() and not force:
                made = marker.read_text(encoding="utf-8").strip()
                if made != f"seed={seed}":
                    raise CompkitError(f"{root} holds the demo made with {made}; pass --force to remake it "
                                       f"with seed={seed}")
                echo(f"{root} already holds the demo data; nothing to do (--force remakes it)")
                return root
            if not force:
                raise CompkitError(f"{root} already holds data; pass --force to replace it with demo data")
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.demo-", dir=root.parent))
        try:
            comp.make_demo(staging, seed)
            (staging / ".demo").write_text(f"seed={seed}\n", encoding="utf-8")
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
        except OSError as error:
            if _io.is_disk_full(error):
                raise CompkitError(_io.disk_full_message(root)) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    echo(f"wrote demo data for {comp.name} to {root}")
    return root


# -- folds ------------------------------------------------------------------------------------


def make_folds(name: str, where: Places, *, n_folds: int = 5, seed: int = 42, force: bool = False) -> Path:
    """Write data/NAME/folds.csv and print the size of each fold."""
    comp = competition(name)
    root = _data_root(comp, where)
    split = _split(comp, comp.train_table(root), n_folds, seed)
    written = folds.write(root, split, force=force)
    sizes = ", ".join(f"{k}: {n}" for k, n in split["fold"].value_counts().sort_index().items())
    echo(f"{'wrote' if written else 'unchanged (same split)'} {root / folds.FILE_NAME} ({sizes})")
    return root / folds.FILE_NAME


def _split(comp: Competition, table: Any, n_folds: int, seed: int) -> Any:
    """The competition's kind of k-fold split of ``table`` (see ``folds.split``)."""
    return folds.split(table, id_column=comp.id_column, n_folds=n_folds, seed=seed,
                       stratify=comp.stratify, group=comp.group)


def _data_root(comp: Competition, where: Places) -> Path:
    root = where.data_root(comp.name)
    if not root.is_dir():
        raise CompkitError(f"no data in {root}; run: compkit download {comp.name} (or --demo for a synthetic twin)")
    return root


def _fold_table(comp: Competition, root: Path, config: Config) -> tuple[Any, Any, Any]:
    """The train table, the split (folds.csv) and each row's fold, making folds.csv first if it is missing.

    Under torchrun every process computes the same split from the seed; only rank 0 writes it.
    """
    table = comp.train_table(root)
    if (root / folds.FILE_NAME).is_file():
        split = folds.read(root)
    else:
        split = _split(comp, table, config.n_folds, config.seed)
        if _distributed.is_main():
            folds.write(root, split)
            echo(f"made {root / folds.FILE_NAME} ({config.n_folds} folds, seed {config.seed})")
    return table, split, folds.assignments(table, split, comp.id_column)


# -- train ------------------------------------------------------------------------------------


def recipe(comp: Competition, recipe_path: str | Path | None, overrides: dict[str, Any]) -> Config:
    """The competition's defaults <- the recipe <- CLI overrides.

    The recipe is a TOML file, or the name of one the plugin ships (``demo``: see
    ``Competition.recipes``); without one, ``competitions/NAME.toml`` in the working folder if present.
    """
    return resolve(comp.defaults, recipe_file(comp, recipe_path), overrides)


def recipe_file(comp: Competition, recipe_path: str | Path | None) -> Path:
    """The TOML file ``--recipe`` names (a path, or a recipe the plugin ships)."""
    if recipe_path is None:
        return Path("competitions") / f"{comp.name}.toml"
    path = Path(recipe_path)
    if path.is_file():
        return path
    shipped = comp.recipes()
    if str(recipe_path) in shipped:
        return shipped[str(recipe_path)]
    names = ", ".join(sorted(shipped)) or "none"
    raise CompkitError(f"recipe {recipe_path} is neither a file nor a recipe {comp.name} ships (it ships: {names})")


def train(name: str, fold: int, where: Places, *, overrides: dict[str, Any] | None = None,
          recipe_path: str | Path | None = None, run: str | None = None, resume: bool = False,
          quiet: bool = False) -> Path:
    """Train one fold; returns runs/NAME/<run>/fold<K>."""
    comp = competition(name)
    root = _data_root(comp, where)
    runs_root = where.runs / name
    if resume:
        run = _run_to_resume(runs_root, run, fold)
        config = Config.from_dict(json.loads((runs_root / run / "config.json").read_text()))
        config = config.replace(**(overrides or {}))
    else:
        config = recipe(comp, recipe_path, overrides or {})
        run = places.check_run_name(run or places.agreed_run_id(runs_root, _distributed.rank(),
                                                                _distributed.world_size()))
    table, split, assignment = _fold_table(comp, root, config)
    n_folds = int(assignment.max()) + 1
    if not 0 <= fold < n_folds:
        raise CompkitError(f"fold {fold} does not exist; folds.csv has folds 0..{n_folds - 1}")
    run_dir = _start_run(runs_root, run, config)
    _check_split(run_dir, split, root)
    echo(f"{comp.name} fold {fold} -> {run_dir}\n{_format_config(config)}")
    out_dir = run_dir / f"fold{fold}"
    from compkit import _train

    main = _distributed.is_main()
    # One training per fold folder: a second one would mix its checkpoints with the first's.
    with _io.locked(out_dir / ".lock", wait=False) if main else contextlib.nullcontext():
        if main:
            for stale in out_dir.glob(".*.tmp"):  # a checkpoint write that a kill interrupted
                stale.unlink(missing_ok=True)
        # "latest" moves with each checkpoint, not when the run ends (which a kill never reaches); a run
        # that failed before its first checkpoint is no candidate
        _train.fit_fold(comp, config, table, assignment == fold, root, out_dir, resume=resume, quiet=quiet,
                        fold=fold, after_epoch=(lambda _: places.point_latest(runs_root, run)) if main else None)
        if main and (out_dir / "last.pt").is_file():
            places.point_latest(runs_root, run)  # a resumed run that had no epoch left to train
    return out_dir


def _run_to_resume(runs_root: Path, run: str | None, fold: int) -> str:
    """``run``, or the run ``latest`` names; refused when a newer run started ``fold`` and was stopped
    before its first checkpoint (``latest`` still names the run before it, which --resume would continue)."""
    resolved = places.resolve_run(runs_root, run)
    if (run and run != places.LATEST) or not (runs_root / resolved / "config.json").is_file():
        return resolved
    started = (runs_root / resolved / "config.json").stat().st_mtime
    for other in places.list_runs(runs_root):
        config = runs_root / other / "config.json"
        fold_dir = runs_root / other / f"fold{fold}"
        if (other != resolved and config.is_file() and config.stat().st_mtime > started and fold_dir.is_dir()
                and not (fold_dir / "last.pt").exists()):
            name = runs_root.name
            raise CompkitError(
                f"run {other} (newer than {resolved}, which 'latest' names) started fold {fold} and stopped before "
                f"its first checkpoint; say which run to resume: compkit train {name} --fold {fold} --resume "
                f"--run-name {other} (starts it from epoch 1) or --run-name {resolved}"
            )
    return resolved


def _check_split(run_dir: Path, split: Any, root: Path) -> None:
    """Keep the run's split beside its config; refuse to train another fold once folds.csv has changed."""
    saved = run_dir / folds.FILE_NAME
    if saved.is_file():
        if not folds.same(folds.read(run_dir), split):
            raise CompkitError(
                f"{root / folds.FILE_NAME} is not the split run {run_dir.name} was trained on (it was remade "
                "since, e.g. by compkit folds --force), so this fold would validate on rows other folds "
                f"trained on: train a new run (--run-name NEW), or put the run's split back with: cp {saved} "
                f"{root / folds.FILE_NAME}"
            )
    elif _distributed.is_main():
        _io.write_csv(saved, split)


def _start_run(runs_root: Path, run: str, config: Config) -> Path:
    """Create (or join) a run: one config for all its folds, saved as config.json."""
    run_dir = runs_root / run
    saved = run_dir / "config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text())
        changed = {k for k, v in config.to_dict().items() if previous.get(k) != v} - RUNTIME_KEYS
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {getattr(config, k)!r}" for k in sorted(changed))
            raise CompkitError(f"run {run} was made with a different config ({details}); "
                               "train with a new --run to compare recipes")
    if _distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        if not saved.is_file():
            _io.write_text(saved, config.to_json())
    return run_dir


def _format_config(config: Config) -> str:
    return "config: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items())


# -- submit -----------------------------------------------------------------------------------


def submit(name: str, where: Places, *, run: str | None = None, fold_spec: str = "all",
           tta: str | None = None, upload: bool = False, message: str | None = None,
           device: str | None = None, batch_size: int | None = None) -> Path:
    """Predict the test set with each chosen fold's best checkpoint, average, write and check."""
    from compkit import _submit

    comp = competition(name)
    if upload and not comp.kaggle:
        raise CompkitError(f"{name} is not a Kaggle competition: there is nowhere to upload")
    root = _data_root(comp, where)
    runs_root = where.runs / name
    run = places.resolve_run(runs_root, run)
    path = _submit.make_submission(comp, root, runs_root / run, where.submission_dir(name),
                                      fold_spec=fold_spec, tta=tta, device=device, batch_size=batch_size)
    if upload:
        from compkit import kaggle

        result = kaggle.submit(comp.kaggle, path, message or f"compkit {name} run {run}")
        echo(f"uploaded: {result.get('message', '')} {result.get('ref', '')}".strip())
    return path


# -- plugins ----------------------------------------------------------------------------------


def plugin_report() -> list[str]:
    """Lines describing each plugin: version, what it registers, and why it failed (if it did)."""
    from compkit import plugins

    lines = []
    try:
        registry.get()
    except CompkitError as error:
        lines.append(f"error: {error}")
    for plugin in plugins.manager().plugins.values():
        head = f"{plugin.name} ({plugin.distribution} {plugin.version})"
        parts = [f"{kind}: {', '.join(names)}" for kind, names in
                 (("competitions", plugin.competitions), ("models", plugin.models),
                  ("losses", plugin.losses), ("commands", plugin.commands)) if names]
        if plugin.error:
            lines.append(f"{head}: FAILED: {plugin.error}" + (f" (still loaded: {'; '.join(parts)})" if parts else ""))
            continue
        lines.append(f"{head}: {'; '.join(parts) or 'registers nothing'}")
    return lines
