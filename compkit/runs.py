"""``compkit runs NAME``: one row per run of a competition (folds, CV, full-data model, submissions, LB),
and ``--diff A B``: the config keys two runs differ in.

Reads only what training and submitting wrote (config.json, fold<K>/fold.json, metrics.csv, oof.npz,
full/, the submissions' sidecars); loads no torch, so the table comes back in about a second.
"""

from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np

from compkit import oof, places
from compkit.competition import Competition
from compkit.config import Config, size_text
from compkit.errors import CompkitError

DONE = "fold.json"  # as compkit.pipeline.DONE, which this module does not import (it would stay light)
STAMP = "%Y%m%d-%H%M%S"  # places.new_run_id's format
UNFINISHED = "*"  # marks a fold whose training did not end: its best score so far, from metrics.csv


def run_rows(comp: Competition, runs_root: Path, submissions_dir: Path) -> list[dict[str, Any]]:
    """One dict per run in ``runs_root``, oldest first; the rows ``--json`` prints."""
    names = run_names(runs_root)
    if not names:
        raise CompkitError(f"no runs in {runs_root}; train one first with: "
                           f"compkit train {comp.name} --fold 0")
    sidecars = read_sidecars(submissions_dir)
    rows = [run_row(comp, runs_root / name, [s for s in sidecars if s.get("run") == name]) for name in names]
    return sorted(rows, key=lambda row: (row["date"], row["run"]))


def run_names(runs_root: Path) -> list[str]:
    """The run folders in ``runs_root``, by name: not ``latest``, nor hidden folders such as ``.locks``."""
    return [name for name in places.list_runs(runs_root) if not name.startswith(".")]


def run_row(comp: Competition, run_dir: Path, sidecars: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of one run: its config's headline keys, each fold, the OOF CV of the finished folds, the
    full-data model and the submissions made from it."""
    config = read_config(run_dir)
    folds = [fold_entry(comp, path) for path in sorted(run_dir.glob("fold*"), key=_fold_number)
             if path.is_dir() and path.name[4:].isdigit()]
    finished = [entry["fold"] for entry in folds
                if entry["finished"] and (run_dir / f"fold{entry['fold']}" / "oof.npz").is_file()]
    leaderboard = [entry for entry in map(leaderboard_entry, sidecars) if entry["public"] is not None]
    publics = [entry["public"] for entry in leaderboard]
    return {
        "run": run_dir.name,
        "date": run_date(run_dir).isoformat(timespec="seconds"),
        "model": config.get("model"),
        "image_size": config.get("image_size"),
        "epochs": config.get("epochs"),
        "folds": folds,
        "cv": oof_score(comp, run_dir, finished) if finished else None,
        "cv_folds": finished,
        "metric": comp.metric,
        "full": any((run_dir / "full" / name).is_file() for name in ("last.pt", "best.pt")),
        "submissions": len(sidecars),
        "best_public": (max if comp.higher_is_better else min)(publics) if publics else None,
        "leaderboard": leaderboard,
    }


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json as saved (empty if missing or unreadable)."""
    try:
        return json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_config(run_dir: Path, comp: Competition) -> Config:
    """The run's saved config as the competition's config class (``type(comp.defaults)``: a plugin's own
    recipe keys included); a run without config.json is an error saying so."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise CompkitError(f"{path} is missing: {run_dir} is not a trained run (compkit train writes it)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise CompkitError(f"{path} is damaged ({error}); the run cannot be used") from None
    return type(comp.defaults).from_dict(saved)


def run_date(run_dir: Path) -> datetime.datetime:
    """When the run started: its id when it is a timestamp, else config.json's (or the folder's) mtime."""
    try:
        return datetime.datetime.strptime(run_dir.name, STAMP)
    except ValueError:
        pass
    source = run_dir / "config.json" if (run_dir / "config.json").is_file() else run_dir
    return datetime.datetime.fromtimestamp(int(source.stat().st_mtime))


def fold_entry(comp: Competition, fold_dir: Path) -> dict[str, Any]:
    """A fold's score: fold.json's best score once training ended, else the best so far in metrics.csv."""
    entry: dict[str, Any] = {"fold": _fold_number(fold_dir), "finished": (fold_dir / DONE).is_file()}
    if entry["finished"]:
        record = json.loads((fold_dir / DONE).read_text(encoding="utf-8"))
        entry.update(score=record.get("best_score"), best_epoch=record.get("best_epoch"),
                     epochs_run=record.get("epochs_run"))
    else:
        entry.update(score=best_so_far(comp, fold_dir / "metrics.csv"), best_epoch=None, epochs_run=None)
    return entry


def best_so_far(comp: Competition, path: Path) -> float | None:
    """The best value of the competition's metric in a metrics.csv (None without one)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            values = [float(row[comp.metric]) for row in csv.DictReader(handle) if row.get(comp.metric)]
    except (OSError, KeyError, ValueError):
        return None
    if not values:
        return None
    return max(values) if comp.higher_is_better else min(values)


def cross_validation(comp: Competition, run_dir: Path, folds: list[int]) -> dict[str, Any]:
    """The CV score from the out-of-fold predictions of ``folds``, overall and per fold, and the folds'
    ``oof`` files (memory-mapped ``compkit.oof.OOF``s), torch-free so that the runs table can use it.

    A score that is a mean over images (Dice) is computed a chunk of images at a time, so a SIIM-sized
    OOF stack is never in memory at once; any other score gets the whole arrays.
    """
    parts = {k: oof.load(run_dir / f"fold{k}" / "oof.npz") for k in folds}
    per_image = comp.image_scores()
    if per_image is not None:
        values = {k: np.concatenate([per_image(t, p) for t, p in part.chunks()]) for k, part in parts.items()}
        scores = {k: float(v.mean()) for k, v in values.items()}
        score = float(np.concatenate(list(values.values())).mean())
    else:
        # scored as each epoch was (Task.validation_score: a detector's score at its best score threshold)
        def score_of(targets: np.ndarray, predictions: np.ndarray) -> float:
            return comp.kind.validation_score(comp.score, targets, predictions, comp.higher_is_better)

        scores = {k: score_of(np.asarray(p.targets), p.probabilities()) for k, p in parts.items()}
        score = score_of(np.concatenate([np.asarray(p.targets) for p in parts.values()]),
                         np.concatenate([p.probabilities() for p in parts.values()]))
    return {"score": score, "folds": scores, "oof": list(parts.values())}


def oof_score(comp: Competition, run_dir: Path, folds: list[int]) -> float:
    """The CV score over the concatenated out-of-fold predictions of ``folds``."""
    return cross_validation(comp, run_dir, folds)["score"]


def read_sidecars(folder: Path) -> list[dict[str, Any]]:
    """Every readable submission sidecar (``<stamp>.json``) in ``folder``, with its stamp."""
    sidecars = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            sidecar = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(sidecar, dict):
            sidecars.append({**sidecar, "stamp": path.stem})
    return sidecars


def leaderboard_entry(sidecar: dict[str, Any]) -> dict[str, Any]:
    """A submission's stamp, CV and leaderboard scores (None where not known)."""
    board = sidecar.get("leaderboard") if isinstance(sidecar.get("leaderboard"), dict) else {}
    return {"stamp": sidecar["stamp"], "cv": sidecar.get("cv_score"),
            "public": _number(board.get("public")), "private": _number(board.get("private"))}


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as an aligned table, with a note under it when a fold is unfinished."""
    fold_ids = sorted({entry["fold"] for row in rows for entry in row["folds"]})
    metric = rows[0]["metric"] if rows else ""
    header = ["run", "date", "model", "size", "epochs", *[f"fold{k}" for k in fold_ids], f"cv {metric}",
              "full", "subs", "best public"]
    cells = [header]
    for row in rows:
        folds = {entry["fold"]: entry for entry in row["folds"]}
        every = [entry["fold"] for entry in row["folds"]]
        cv = _format_score(row["cv"])
        if row["cv"] is not None and row["cv_folds"] != every:
            cv += f" ({','.join(map(str, row['cv_folds']))})"
        cells.append([row["run"], row["date"].replace("T", " ")[:16], _text(row["model"]),
                      _size(row["image_size"]), _text(row["epochs"]),
                      *[_fold_cell(folds.get(k)) for k in fold_ids], cv, "yes" if row["full"] else "no",
                      str(row["submissions"]), _format_score(row["best_public"])])
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    if any(not entry["finished"] for row in rows for entry in row["folds"]):
        lines.append(f"{UNFINISHED} unfinished fold: its best so far (metrics.csv); "
                     "cv covers finished folds only")
    return lines


def config_diff(runs_root: Path, run_a: str, run_b: str) -> list[tuple[str, Any, Any]]:
    """(key, A's value, B's value) for each config key the two runs differ in, sorted by key.

    A key a run's config.json lacks (saved before the key existed) counts as its default.
    """
    configs, known = [], run_names(runs_root)
    for run in (run_a, run_b):
        name = places.resolve_run(runs_root, run) if run == places.LATEST else run
        if name not in known:
            raise CompkitError(f"no run {run!r} in {runs_root}; runs: {', '.join(known) or 'none'}")
        path = runs_root / name / "config.json"
        if not path.is_file():
            raise CompkitError(f"run {name} has no config.json ({path})")
        configs.append({**Config().to_dict(), **read_config(runs_root / name)})
    a, b = configs
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def diff_lines(run_a: str, run_b: str, differences: list[tuple[str, Any, Any]]) -> list[str]:
    """The differences as an aligned table (key, A, B), or one line saying there are none."""
    if not differences:
        return [f"runs {run_a} and {run_b} have the same config"]
    cells = [("key", run_a, run_b), *[(key, _text(a), _text(b)) for key, a, b in differences]]
    widths = [max(len(line[i]) for line in cells) for i in range(2)]
    return [f"{key.ljust(widths[0])}  {a.ljust(widths[1])}  {b}".rstrip() for key, a, b in cells]


def _fold_number(path: Path) -> int:
    return int(path.name[4:]) if path.name[4:].isdigit() else -1


def _fold_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    return _format_score(entry["score"]) + ("" if entry["finished"] else UNFINISHED)


def _format_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _size(value: Any) -> str:
    """config.json's image_size as people write it: 224, or 320x480 for height x width."""
    try:
        return size_text(value)
    except CompkitError:  # not a size compkit wrote
        return _text(value)


def _number(value: Any) -> float | None:
    """A leaderboard score as a float (Kaggle reports them as strings), None if absent or not a number."""
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
