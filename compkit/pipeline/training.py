"""The training verbs: ``compkit train`` (one fold, several of one run, a full fit, a dry run) and ``lr-find``.

A run's later folds, and a resume, train with the run's config (config.json) and split (its folds.csv):
what would make its folds disagree is refused before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compkit import _distributed, _io, console, folds, places, registry, runs
from compkit.competition import Competition
from compkit.config import Config, size_text
from compkit.errors import CompkitError
from compkit.pipeline import _build, _common, _fit, _pseudo
from compkit.places import Places

# may differ between folds of a run (keep_top only keeps more files)
RUNTIME_KEYS = {"device", "num_workers", "epochs", "patience", "tta", "keep_top", "mask_threshold"}
DRY_RUN_BATCHES = 2  # train --dry-run: batches of training and of validation


def train(name: str, fold: int, where: Places, *, overrides: dict[str, Any] | None = None,
          recipe_path: str | Path | None = None, run: str | None = None, resume: bool = False,
          quiet: bool = False, full: bool = False, dry_run: bool = False, limit_batches: int | None = None,
          sources: Path | None = None) -> Path:
    """Train one fold; returns runs/NAME/<run>/fold<K>. ``full``: instead, a final fit on every labelled row
    with no validation, into runs/NAME/<run>/full, for the mean best epoch of the run's finished folds
    unless ``epochs`` is given. ``dry_run``: two batches of training and two of validation, through every
    file a fold writes, in a temporary folder that is removed afterwards. ``limit_batches``: at most this
    many batches of training and of validation per epoch. ``sources``: the folder of runs that the config's
    ``soft_targets`` and ``pseudo`` name (default runs/NAME; a dry run's scratch folder has none).

    Everything that can be checked is checked before any work: the device, the run's config and
    split, the fold. The run folder is made only when training starts, so a failed start leaves none.
    """
    from compkit.loaders import resolve_device

    comp = _common.competition(name)
    root = _common.data_root(comp, where)
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="compkit-dry-run-") as scratch:
            return _dry_run(name, fold, dataclasses.replace(where, runs=Path(scratch)), overrides, recipe_path,
                            full, quiet, sources=where.runs / name)
    runs_root = where.runs / name
    overrides = overrides or {}
    part = "full" if full else f"fold{fold}"
    if resume:
        run = _run_to_resume(runs_root, run, part)
    else:
        run = places.check_run_name(run or places.agreed_run_id(runs_root, _distributed.rank(),
                                                                _distributed.world_size()))
    # a run's later folds (and a resume) use the run's config: only what is given again may differ
    config = _run_config(comp, runs_root / run, recipe_path, overrides, resume=resume)
    resolve_device(config.device)
    table, split, assignment = _common.fold_rows(comp, root, config)
    config = _recorded_folds(comp, config, int(assignment.max()) + 1, overrides)
    run_dir = runs_root / run
    if full:
        config = _full_epochs(run_dir, config, overrides)
    elif not 0 <= fold < config.n_folds:
        raise CompkitError(f"fold {fold} does not exist; folds.csv has folds 0..{config.n_folds - 1}")
    _check_run(run_dir, config)
    _check_split(run_dir, split, root / folds.file_name(comp))
    _warn_offline_weights(comp, root, config)
    init_from = _init_weights(runs_root, config.init_from, part)
    from compkit import balance

    balance.check(comp, config)
    what = "full fit (all labelled rows, no validation)" if full else f"fold {fold}"
    console.echo(f"{comp.name} {what} -> {run_dir}\n{_format_config(config, comp.defaults, comp.name)}")
    out_dir = run_dir / part
    # soft targets and pseudo-labels from other runs, read (or predicted) before the run folder is made
    extra = _pseudo.prepare(comp, config, sources or runs_root, root, table,
                            np.ones(len(table), dtype=bool) if full else assignment != fold, run=run)

    main = _distributed.is_main()

    def start() -> None:
        if main:
            _record_run(run_dir, config, split)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / _common.DONE).unlink(missing_ok=True)  # unfinished until this training ends
            for stale in out_dir.glob(".*.tmp"):  # a checkpoint write that a kill interrupted
                stale.unlink(missing_ok=True)

    # One training per fold: a second one would mix its checkpoints with the first's.
    with _io.locked(_common.fold_lock(runs_root, run, part), wait=False, what=out_dir) if main else contextlib.nullcontext():
        # "latest" moves with each checkpoint, not when the run ends (which a kill never reaches); a run
        # that failed before its first checkpoint is no candidate
        validate = np.zeros(len(table), dtype=bool) if full else assignment == fold
        result = _fit.fit_fold(comp, config, table, validate, root, out_dir, resume=resume, quiet=quiet,
                               fold=-1 if full else fold, on_start=start, init_from=init_from,
                               limit_batches=limit_batches, **extra,
                               after_epoch=(lambda _: places.point_latest(runs_root, run)) if main else None)
        if main:
            places.point_latest(runs_root, run)  # also for a resumed run that had no epoch left to train
            _io.write_text(out_dir / _common.DONE, json.dumps({**result, "epochs": config.epochs}, indent=2, default=float) + "\n")
            report = None if full else _fold_report(comp, out_dir)
            if report:
                console.echo(report)
    best = f"best epoch {result['best_epoch']}, {result['metric']} {result['best_score']:.5f}" if result["best_epoch"] else ""
    if full:
        best = f"{result['epochs_run']} epochs"
    console.echo(f"{what} done: {best + ' -> ' if best else ''}{out_dir}")
    return out_dir


def _dry_run(name: str, fold: int, where: Places, overrides: dict[str, Any] | None,
             recipe_path: str | Path | None, full: bool, quiet: bool, sources: Path | None = None) -> Path:
    """``train`` for one epoch of ``DRY_RUN_BATCHES`` batches in the scratch ``where.runs``; lists what it wrote."""
    out_dir = train(name, fold, where, overrides={**(overrides or {}), "epochs": 1}, recipe_path=recipe_path,
                    run="dry-run", quiet=quiet, full=full, limit_batches=DRY_RUN_BATCHES, sources=sources)
    written = sorted(path.name for path in out_dir.iterdir() if not path.name.startswith("."))
    console.echo(f"dry run passed: {DRY_RUN_BATCHES} training and {DRY_RUN_BATCHES} validation batches wrote "
                 f"{', '.join(written)} (removed again; nothing was kept)")
    return out_dir


def _fold_report(comp: Competition, out_dir: Path) -> str | None:
    """``comp.report`` on the fold's out-of-fold predictions (oof.npz), when the competition has a report."""
    from compkit import oof

    path = out_dir / "oof.npz"
    if type(comp).report is Competition.report or not path.is_file():
        return None
    part = oof.load(path)
    return comp.report(np.asarray(part.targets[:]), part.probabilities())


def train_folds(name: str, spec: str, where: Places, *, overrides: dict[str, Any] | None = None,
                recipe_path: str | Path | None = None, run: str | None = None, resume: bool = False,
                quiet: bool = False) -> Path:
    """Train the folds ``spec`` names ("all" or "0,2,4") of one run in turn; print their CV at the end.

    With ``resume``, finished folds (``fold.json``) are skipped and the first unfinished one continues
    from its last.pt. Returns the run folder.
    """
    comp = _common.competition(name)
    root = _common.data_root(comp, where)
    runs_root = where.runs / name
    if resume:
        run = places.resolve_run(runs_root, run)
    else:
        run = places.check_run_name(run or places.agreed_run_id(runs_root, _distributed.rank(),
                                                                _distributed.world_size()))
    run_dir = runs_root / run
    config = _run_config(comp, run_dir, recipe_path, overrides or {}, resume=resume)
    chosen = _fold_numbers(root / folds.file_name(comp), config, spec)
    finished = [k for k in chosen if resume and (run_dir / f"fold{k}" / _common.DONE).is_file()]
    if finished:
        console.echo(f"run {run}: fold(s) {', '.join(map(str, finished))} already finished")
    from compkit.loaders import resolve_device

    # Under torchrun one process group serves every fold: an Engine that made its own would leave it at the
    # end of its fold, and joining again hangs.
    owns_group = _distributed.start(resolve_device(config.device))
    try:
        for k in chosen:
            if k not in finished:
                train(name, k, where, overrides=overrides, recipe_path=recipe_path, run=run, resume=resume,
                      quiet=quiet)
    finally:
        if owns_group:
            _distributed.stop()
    cv = runs.cross_validation(comp, run_dir, chosen)
    records = _common.fold_records(run_dir, chosen, allow_unfinished=False)
    console.echo(f"run {run}: CV {comp.metric} {cv['score']:.5f} over folds {', '.join(map(str, chosen))}\n"
                 + _common.fold_table(cv["folds"], records))
    return run_dir


def lr_find(name: str, fold: int, where: Places, *, overrides: dict[str, Any] | None = None,
            recipe_path: str | Path | None = None, start: float = 1e-7, end: float = 1.0,
            iterations: int = 100) -> float:
    """The learning-rate range test (torch-lr-finder) on fold ``fold``'s training rows: the loss over an
    exponential lr range, plotted to runs/NAME/lr_find.png; returns the suggested lr (steepest descent).
    The model is thrown away: no run is made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    from compkit import optim
    from compkit.loaders import resolve_device

    comp = _common.competition(name)
    root = _common.data_root(comp, where)
    config = _common.recipe(comp, recipe_path, overrides or {})
    device = resolve_device(config.device)
    rows, _, assignment = _common.fold_rows(comp, root, config)
    reg = registry.get()
    model = _build.build_model(comp, config, config.pretrained)
    loader = _build.loader(comp, rows[assignment != fold].reset_index(drop=True), root, "train", config)

    class Batches(TrainDataLoaderIter):
        def inputs_labels_from_batch(self, batch: dict[str, Any]) -> tuple[Any, Any]:
            return batch["image"], batch["target"]

    finder = LRFinder(model, optim.build_optimizer(model, config), reg.loss(config.loss, config=config, competition=comp), device=device)
    figure, axis = plt.subplots(figsize=(7, 4))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its own lines about what to call next
        finder.range_test(Batches(loader), start_lr=start, end_lr=end, num_iter=iterations)
        _, suggested = finder.plot(ax=axis, suggest_lr=True)
    if suggested is None:
        raise CompkitError(f"the loss did not fall over lr {start:g}..{end:g} in {iterations} steps: widen the range")
    axis.set_title(f"{comp.name}: lr range test on fold {fold}'s training rows ({config.model})")
    plot = where.runs / name / "lr_find.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    with _io.atomic_path(plot) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    console.echo(f"suggested lr {suggested:.2e} (steepest fall of the loss; try it with --lr {suggested:.1e}); plot: {plot}")
    return float(suggested)


def _run_config(comp: Competition, run_dir: Path, recipe_path: str | Path | None, overrides: dict[str, Any],
                *, resume: bool = False) -> Config:
    """The config the run's folds train with: its config.json when it has one (and no other recipe is given,
    or it resumes), else the recipe. Of the competition's config class, so its own keys read back."""
    if (run_dir / "config.json").is_file() and (resume or recipe_path is None):
        saved = json.loads((run_dir / "config.json").read_text())
        return type(comp.defaults).from_dict(saved).replace(**overrides)
    return _common.recipe(comp, recipe_path, overrides)


def _fold_numbers(split_file: Path, config: Config, spec: str) -> list[int]:
    """The folds ``spec`` names; "all" is every fold of the split (``split_file``, else the config's n_folds)."""
    if split_file.is_file():
        n_folds = folds.count(folds.read(split_file.parent, split_file.name))
    else:
        n_folds = config.n_folds
    if spec == "all":
        return list(range(n_folds))
    try:
        chosen = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise CompkitError(f"--folds expects 'all' or comma-separated fold numbers, got {spec!r}") from None
    outside = [k for k in chosen if not 0 <= k < n_folds]
    if outside or not chosen:
        raise CompkitError(f"--folds {spec}: the split has folds 0..{n_folds - 1}")
    return chosen


def _recorded_folds(comp: Competition, config: Config, n_folds: int, overrides: dict[str, Any]) -> Config:
    """The config with the split's number of folds: asked for another on the command line, an error."""
    if config.n_folds == n_folds:
        return config
    if "n_folds" in overrides:
        raise CompkitError(f"folds.csv has {n_folds} folds but n_folds={config.n_folds} was asked for: remake the "
                           f"split with compkit folds {comp.name} --n-folds {config.n_folds} --force, or drop the "
                           "setting")
    return config.replace(n_folds=n_folds)


def _full_epochs(run_dir: Path, config: Config, overrides: dict[str, Any]) -> Config:
    """The config of a full fit: ``epochs`` as given, else the mean best epoch of the run's finished folds."""
    if "epochs" in overrides:
        return config
    best = [json.loads(path.read_text())["best_epoch"] for path in sorted(run_dir.glob(f"fold*/{_common.DONE}"))]
    best = [epoch for epoch in best if epoch]
    if not best:
        console.note(f"run {run_dir.name} has no finished fold to take the number of epochs from; the full fit "
                     f"trains for the config's {config.epochs} (--epochs sets it)")
        return config
    epochs = max(1, round(sum(best) / len(best)))
    console.echo(f"full fit: {epochs} epochs, the mean best epoch of {len(best)} finished fold(s) ({best})")
    return config.replace(epochs=epochs)


def _init_weights(runs_root: Path, spec: str, part: str) -> Path | None:
    """The best.pt that ``init_from`` names (``RUN``: that run's same fold; ``RUN/foldK``, ``RUN/full``),
    checked now."""
    if not spec:
        return None
    run, _, fold_name = spec.partition("/")
    places.check_run_name(run)
    if fold_name and not re.fullmatch(r"fold\d+|full", fold_name):
        raise CompkitError(f"init_from={spec!r}: expected RUN or RUN/foldK, e.g. {run}/{part}")
    source = fold_name or part
    path = runs_root / run / source / "best.pt"
    if not path.is_file():
        trained = sorted(p.parent.name for p in (runs_root / run).glob("fold*/best.pt"))
        raise CompkitError(f"init_from={spec!r}: {path} does not exist (trained folds of {run}: "
                           f"{', '.join(trained) or 'none'})")
    if source != part and part != "full":
        console.note(f"{part} starts from {run}/{source}, which trained on {part}'s validation rows: "
                     "its validation score will be optimistic")
    return path


def _warn_offline_weights(comp: Competition, root: Path, config: Config) -> None:
    """Say at once when demo data meets a recipe that wants pretrained weights (the internet, once)."""
    if config.pretrained and (root / ".demo").exists() and "demo" in comp.recipes():
        console.note(f"{root} holds demo data and this recipe loads pretrained weights, which needs the internet "
                     f"once (or COMPKIT_WEIGHTS_DIR); offline, use the demo recipe: compkit train {comp.name} --fold K "
                     "--recipe demo (or --set pretrained=false)")


def _run_to_resume(runs_root: Path, run: str | None, part: str) -> str:
    """``run``, or the run ``latest`` names; refused when a newer run started ``part`` (fold<K>, full) and was
    stopped before its first checkpoint (``latest`` still names the run before it, which --resume would
    continue)."""
    resolved = places.resolve_run(runs_root, run)
    if (run and run != places.LATEST) or not (runs_root / resolved / "config.json").is_file():
        return resolved
    started = (runs_root / resolved / "config.json").stat().st_mtime
    for other in places.list_runs(runs_root):
        config = runs_root / other / "config.json"
        fold_dir = runs_root / other / part
        if (other != resolved and config.is_file() and config.stat().st_mtime > started and fold_dir.is_dir()
                and not (fold_dir / "last.pt").exists()):
            flag = "--full" if part == "full" else f"--fold {part[4:]}"
            raise CompkitError(
                f"run {other} (newer than {resolved}, which 'latest' names) started {part.replace('fold', 'fold ')} "
                f"and stopped before its first checkpoint; say which run to resume: compkit train {runs_root.name} "
                f"{flag} --resume --run-name {other} (starts it from epoch 1) or --run-name {resolved}"
            )
    return resolved


def _check_split(run_dir: Path, split: Any, split_file: Path) -> None:
    """Refuse to train another fold of a run once its split file (folds.csv) has changed (the run keeps its
    own copy)."""
    saved = run_dir / folds.FILE_NAME
    if saved.is_file() and not folds.same(folds.read(run_dir), split):
        raise CompkitError(
            f"{split_file} is not the split run {run_dir.name} was trained on (it was remade "
            "since, e.g. by compkit folds --force), so this fold would validate on rows other folds "
            f"trained on: train a new run (--run-name NEW), or put the run's split back with: cp {saved} "
            f"{split_file}"
        )


def _check_run(run_dir: Path, config: Config) -> None:
    """Refuse a fold whose config conflicts with the run's (keys other than ``RUNTIME_KEYS``)."""
    saved = run_dir / "config.json"
    if not saved.is_file():
        return
    # a key the saved config lacks was added to compkit after the run was made: the run had its default
    previous = {**type(config)().to_dict(), **json.loads(saved.read_text())}
    changed = {k for k, v in config.to_dict().items() if previous.get(k) != v} - RUNTIME_KEYS
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {getattr(config, k)!r}" for k in sorted(changed))
        raise CompkitError(f"run {run_dir.name} was made with a different config ({details}); drop those settings "
                           "to train another fold of it, or train a new --run-name to compare recipes")


def _record_run(run_dir: Path, config: Config, split: Any) -> None:
    """Make (or join) the run: config.json records what this fold runs (epochs after a --resume
    --epochs included), folds.csv the split every fold of the run uses."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _io.write_text(run_dir / "config.json", config.to_json())
    if not (run_dir / folds.FILE_NAME).is_file():
        _io.write_csv(run_dir / folds.FILE_NAME, split)


def _format_config(config: Config, defaults: Config, name: str) -> str:
    """The config as an aligned block, three keys a line; ``*`` marks a value not the competition's default."""
    default = defaults.to_dict()
    cells = [f"{key}={size_text(value) if key == 'image_size' else value}{'*' if default.get(key) != value else ''}"
             for key, value in config.to_dict().items()]
    width = max(map(len, cells)) + 2
    rows = ["  " + "".join(cell.ljust(width) for cell in cells[i:i + 3]).rstrip() for i in range(0, len(cells), 3)]
    return f"config (* = not the {name} default):\n" + "\n".join(rows)
