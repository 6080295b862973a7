"""What every verb finds first: the competition, its data folder and tables, the split, the recipe, and a
run's folds with their training records. Light: no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compkit import _distributed, console, folds, registry
from compkit.competition import Competition
from compkit.config import Config, resolve
from compkit.errors import CompkitError
from compkit.places import Places

DONE = "fold.json"  # written when a fold's training ends: its epochs, best epoch and score


def competition(name: str) -> Competition:
    """The registered competition, with failed plugins reported as warnings."""
    reg = registry.get()
    reg.manager.warn_failed()
    return reg.competition(name)


# -- data -------------------------------------------------------------------------------------


def data_root(comp: Competition, where: Places) -> Path:
    """data/NAME (a variant's parent's folder), which must hold data."""
    root = where.data_root(comp.data_name or comp.name)
    if not root.is_dir() or not any(path.is_file() for path in root.iterdir() if path.name != ".compkit"):
        raise CompkitError(f"no data in {root}; run: compkit download {comp.name} (or --demo for a synthetic twin)")
    return root


def table(comp: Competition, root: Path, stage: str) -> Any:
    """``comp.train_table`` or ``comp.test_table``; a file the plugin does not find is an error saying what to do."""
    try:
        return comp.train_table(root) if stage == "train" else comp.test_table(root)
    except FileNotFoundError as error:
        raise CompkitError(f"{error.filename or error} is missing from {root}: run compkit download {comp.name} "
                           "(--force to fetch everything again)") from None


def competition_split(comp: Competition, rows: Any, n_folds: int, seed: int, root: Path) -> Any:
    """The competition's split of ``rows``: its own (``fixed_split``), else its kind of k-fold (see
    ``folds.split``)."""
    given = comp.fixed_split(rows, root)
    if given is not None:
        return folds.fixed(rows, given, id_column=comp.id_column, what=f"{comp.name}'s fixed_split()")
    return folds.split(rows, id_column=comp.id_column, n_folds=n_folds, seed=seed,
                       stratify=comp.stratify, group=comp.group)


def fold_rows(comp: Competition, root: Path, config: Config) -> tuple[Any, Any, Any]:
    """The train table, the split (folds.csv) and each row's fold, making folds.csv first if it is missing.

    Under torchrun every process computes the same split from the seed; only rank 0 writes it.
    """
    rows = table(comp, root, "train")
    name = folds.file_name(comp)
    if (root / name).is_file():
        split = folds.read(root, name)
    else:
        split = competition_split(comp, rows, config.n_folds, config.seed, root)
        if _distributed.is_main():
            folds.write(root, split, name=name)
            console.echo(f"made {root / name} ({folds.count(split)} folds, seed {config.seed})")
    return rows, split, folds.assignments(rows, split, comp.id_column)


# -- recipes ----------------------------------------------------------------------------------


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


# -- a run's folds ----------------------------------------------------------------------------


def fold_lock(runs_root: Path, run: str, part: str) -> Path:
    """The lock a training of ``part`` (fold<K> or full) of ``run`` holds (outside the run folder, which it
    may not make yet)."""
    return runs_root / ".locks" / f"{run}.{part}.lock"


def choose_models(run_dir: Path, spec: str) -> tuple[list[int], bool]:
    """The folds and whether the full fit are in ``spec`` ("all", "0,2", "full", "all,full")."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    full = "full" in parts
    rest = ",".join(part for part in parts if part != "full")
    if full and not (run_dir / "full" / "best.pt").is_file():
        raise CompkitError(f"run {run_dir.name} has no full fit (full/best.pt): make it with compkit train NAME "
                           f"--full --run-name {run_dir.name}")
    return (choose_folds(run_dir, rest) if rest or not full else []), full


def choose_folds(run_dir: Path, spec: str) -> list[int]:
    """The folds of ``spec`` ("all" or "0,2,3") that have a best checkpoint."""
    trained = sorted(int(p.parent.name[4:]) for p in run_dir.glob("fold*/best.pt"))
    if not trained:
        raise CompkitError(f"run {run_dir} has no trained fold (no fold*/best.pt); train one first")
    if spec == "all":
        return trained
    try:
        wanted = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise CompkitError(f"--folds expects 'all' or comma-separated numbers, got {spec!r}") from None
    missing = [k for k in wanted if k not in trained]
    if missing:
        raise CompkitError(f"fold(s) {missing} of run {run_dir.name} have no best.pt; trained folds: {trained}")
    return wanted


def fold_records(run_dir: Path, chosen: list[int], allow_unfinished: bool) -> dict[int, dict[str, Any] | None]:
    """Each fold's training record (``fold.json``: epochs, best epoch and score), None if it never ended."""
    records = {}
    for k in chosen:
        path = run_dir / f"fold{k}" / DONE
        records[k] = json.loads(path.read_text()) if path.is_file() else None
    unfinished = [k for k, record in records.items() if record is None]
    if unfinished and not allow_unfinished:
        raise CompkitError(
            f"fold(s) {unfinished} of run {run_dir.name} did not finish training (interrupted, or still running): "
            f"resume them with compkit train NAME --fold K --resume --run-name {run_dir.name}, leave them out with "
            "--folds, or use them as they are with --allow-unfinished"
        )
    return records


def full_record(run_dir: Path, allow_unfinished: bool) -> dict[str, Any] | None:
    """The full fit's training record (``full/fold.json``), None if it never ended and that is allowed."""
    path = run_dir / "full" / DONE
    if not path.is_file() and not allow_unfinished:
        raise CompkitError(f"the full fit of run {run_dir.name} did not finish training: resume it with compkit train "
                           f"NAME --full --resume --run-name {run_dir.name}, or use it as it is with --allow-unfinished")
    return json.loads(path.read_text()) if path.is_file() else None


def fold_table(scores: dict[int, float], records: dict[int, dict[str, Any] | None]) -> str:
    """One line per fold: its out-of-fold score, the epoch it comes from and the epochs trained."""
    lines = []
    for k, score in scores.items():
        record = records.get(k)
        trained = ("unfinished" if record is None else
                   f"best epoch {record['best_epoch']} of {record['epochs_run']}/{record['epochs']}"
                   + (", stopped early" if record.get("stopped_early") else ""))
        lines.append(f"  fold {k}: {score:.5f}  ({trained})")
    return "\n".join(lines)
