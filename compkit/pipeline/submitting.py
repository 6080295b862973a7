"""``compkit submit``: predict the test set with a run's folds, average, post-process, write and check the
submission (a CSV, or a competition's own files), and upload it to Kaggle."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compkit import _io, console, oof, places, registry, submission
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _common, _predict
from compkit.places import Places
from compkit.runs import cross_validation, run_config

SEARCH_LIMIT = 1000
CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}  # submit --checkpoint
PACKED = "packed.json"  # in a run folder compkit pack wrote: the CV recorded when packing


def submit(name: str, where: Places, *, run: str | None = None, fold_spec: str = "all",
           tta: str | None = None, upload: bool = False, message: str | None = None,
           device: str | None = None, batch_size: int | None = None, allow_unfinished: bool = False,
           checkpoint: str = "best", mask_threshold: float | None = None) -> Path:
    """Predict the test set with each chosen fold's best checkpoint (or ``checkpoint="last"``), average,
    write and check. ``mask_threshold`` replaces the run's (segmentation; 0 searches it on OOF).

    With ``upload``, what can refuse the upload (demo data, no credentials) is checked first.
    """
    comp = _common.competition(name)
    root = _common.data_root(comp, where)
    if upload:
        _check_upload(comp, root)
    runs_root = where.runs / name
    run = places.resolve_run(runs_root, run)
    path = make_submission(comp, root, runs_root / run, where.submission_dir(name), fold_spec=fold_spec, tta=tta,
                           device=device, batch_size=batch_size, allow_unfinished=allow_unfinished,
                           checkpoint=checkpoint, mask_threshold=mask_threshold)
    if upload:
        from compkit import kaggle

        console.echo(f"uploading {path} to {comp.kaggle}")
        result = kaggle.submit(comp.kaggle, path, message or f"compkit {name} run {run}")
        console.echo(f"uploaded {path.name}: {result.get('message', '')} {result.get('ref', '')}".strip())
        sidecar = path.with_suffix(".json")
        _io.write_text(sidecar, json.dumps({**json.loads(sidecar.read_text()), "upload": result}, indent=2,
                                           default=str) + "\n")
    return path


def _check_upload(comp: Competition, root: Path) -> None:
    if not comp.kaggle:
        source = (f": its data is the Kaggle dataset {comp.kaggle_dataset}, and a dataset has no competition to "
                  "submit to" if comp.kaggle_dataset else "")
        raise CompkitError(f"{comp.name} is not a Kaggle competition{source}; there is nowhere to upload "
                           "(submit without --upload: the file and its sidecar stay in the submissions folder)")
    if (root / ".demo").exists():
        raise CompkitError(f"{root} holds demo data: a submission made from it cannot score on Kaggle; download "
                           f"the real data with compkit download {comp.name} --force, or submit without --upload")
    from compkit import kaggle

    kaggle.check_credentials()


def make_submission(comp: Competition, root: Path, run_dir: Path, out_dir: Path, *, fold_spec: str = "all",
                    tta: str | None = None, device: str | None = None, batch_size: int | None = None,
                    allow_unfinished: bool = False, checkpoint: str = "best",
                    mask_threshold: float | None = None) -> Path:
    """Write ``out_dir/<stamp>.csv`` (or, for a competition with ``output_files``, the folder
    ``out_dir/<stamp>/``) and its ``.json`` sidecar; returns the CSV (or the folder).

    A fold whose training did not end (interrupted, or still running) is refused unless
    ``allow_unfinished``; the sample submission is read before anything is predicted. ``checkpoint``:
    "best" (best.pt) or "last" (last.pt: the CV shown is still best.pt's, from its OOF). ``mask_threshold``
    replaces the run's (segmentation: 0 searches it on the OOF).
    """
    config = run_config(run_dir, comp)
    if mask_threshold is not None:
        config = config.replace(mask_threshold=mask_threshold)
    if checkpoint not in CHECKPOINTS:
        raise CompkitError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, not {checkpoint!r}")
    folds, full = _common.choose_models(run_dir, fold_spec)
    trained = _common.fold_records(run_dir, folds, allow_unfinished)
    if full:
        trained |= {"full": _common.full_record(run_dir, allow_unfinished)}
    view_mode = tta or config.tta
    models = [f"fold{k}" for k in folds] + (["full"] if full else [])
    missing = [name for name in models if not (run_dir / name / CHECKPOINTS[checkpoint]).is_file()]
    if missing:
        raise CompkitError(f"run {run_dir.name} has no {CHECKPOINTS[checkpoint]} for {', '.join(missing)} (a pack "
                           "keeps best.pt only): submit with --checkpoint best")
    comp.read_sample(root)  # missing or unreadable: say so now, not after the whole test set
    cv = {"score": None, "folds": {}}
    if folds and (run_dir / PACKED).is_file():  # a pack (compkit pack): no out-of-fold predictions in it
        cv = packed_cv(json.loads((run_dir / PACKED).read_text()), folds)
        score = "unknown for a subset of the packed folds" if cv["score"] is None else f"{cv['score']:.5f}"
        console.echo(f"CV {comp.metric} recorded when packed: {score} over folds {', '.join(map(str, folds))}\n"
                     + _common.fold_table(cv["folds"], trained))
    elif folds:
        cv = cross_validation(comp, run_dir, folds)
        console.echo(f"CV {comp.metric}: {cv['score']:.5f} over folds {', '.join(map(str, folds))}\n"
                     + _common.fold_table(cv["folds"], trained))
    else:
        console.echo("no CV: the full fit has no validation rows (add folds to see one: --folds all,full)")
    params = None
    if comp.kind.searches_postprocess and not comp.output_files:
        params = _postprocess(comp, config, run_dir, cv)
    cv.pop("oof", None)  # the out-of-fold maps are not needed while the test set is predicted
    test_table = _common.table(comp, root, "test")
    held_out = HeldOutScore.for_test(comp, root, test_table)
    if checkpoint == "last":
        console.echo("predicting with each model's last.pt (the last epoch trained); the CV above is best.pt's")
    arguments = (comp, config, root, run_dir, models, test_table, view_mode, device, batch_size)
    if comp.output_files:
        predictions = decided_rows(*arguments, checkpoint=CHECKPOINTS[checkpoint], held_out=held_out)
    else:
        frame = submission_rows(*arguments, params, checkpoint=CHECKPOINTS[checkpoint], held_out=held_out)
    test_score = None if held_out is None else held_out.report()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # The sidecar claims the name (two submits in one second get two) and is written first: a kill
    # in between leaves a sidecar without its CSV, never a CSV nobody can trace back to its run.
    with _io.new_file(out_dir, stamp, ".json", beside=(".csv", "")) as sidecar_path:
        sidecar = {
            "competition": comp.name, "run": run_dir.name, "folds": folds, "full": full, "tta": view_mode,
            "checkpoint": CHECKPOINTS[checkpoint],
            "cv_score": cv["score"], "fold_scores": cv["folds"], "metric": comp.metric, "postprocess": params,
            "test_score": test_score,
            "config": config.to_dict(), "rows": len(test_table), "code_version": code_version(comp),
            "written": datetime.datetime.now().isoformat(timespec="seconds"), "fold_training": trained,
            "demo_data": (root / ".demo").exists(),
        }
        if comp.output_files:
            return _write_folder(comp, test_table, predictions, sidecar_path, sidecar)
        _io.write_text(sidecar_path, json.dumps(sidecar, indent=2, default=str) + "\n")
        path = sidecar_path.with_suffix(".csv")
        # checked, then written atomically
        submission.write(frame, path, comp.read_sample(root), comp.labels(), comp.blank_columns)
    return path


def _write_folder(comp: Competition, test_table: Any, predictions: list[np.ndarray], sidecar_path: Path,
                  sidecar: dict[str, Any]) -> Path:
    """The competition's files (``write_files``) built in a staging folder that moves to ``<stamp>/`` only when
    it returns; the sidecar, listing them, is written first beside it. Any failure leaves neither."""
    folder = sidecar_path.with_suffix("")
    with _io.staging(folder, "files") as staging:
        written = comp.write_files(test_table, predictions, staging)
        names = sorted(str(Path(path).relative_to(staging)) for path in written or [])
        if not names:
            raise CompkitError(f"{comp.name}.write_files wrote no file into {staging}")
        outside = [name for name in names if not (staging / name).exists()]
        if outside:
            raise CompkitError(f"{comp.name}.write_files returned files it did not write: {', '.join(outside[:3])}")
        _io.write_text(sidecar_path, json.dumps({**sidecar, "files": names}, indent=2, default=str) + "\n")
        staging.rename(folder)
    console.echo(f"wrote {len(names)} file(s) into {folder}")
    return folder


def decided_rows(comp: Competition, config: Config, root: Path, run_dir: Path, models: list[str],
                 test_table: Any, view_mode: str, device: str | None, batch_size: int | None,
                 checkpoint: str = "best.pt", held_out: HeldOutScore | None = None) -> list[np.ndarray]:
    """Per test row, what a file output receives (``Task.decided``): kept one array per image, so images
    of different sizes need no common shape."""
    rows, start = [], 0
    for probabilities in _predict.predict_batches(comp, config, root, run_dir, models, test_table, view_mode,
                                                  device, batch_size, checkpoint):
        if held_out is not None:
            held_out.add(probabilities, start)
        rows.extend(comp.kind.decided(probability) for probability in probabilities)
        start += len(probabilities)
    if not rows:
        raise CompkitError(f"{comp.name}'s test table has no rows: nothing to predict")
    return rows


def _postprocess(comp: Competition, config: Config, run_dir: Path, cv: dict[str, Any]) -> dict[str, Any]:
    """Post-processing chosen on the out-of-fold predictions (saved as postprocess.json), or the saved choice
    when no fold is submitted."""
    saved = run_dir / "postprocess.json"
    params = comp.kind.fixed_postprocess(config)
    if params is not None:  # fixed by the recipe: no search
        console.echo(f"post-processing fixed by the config: {params}")
        return params
    if "oof" not in cv:
        if not saved.is_file():
            raise CompkitError("the full fit alone has no out-of-fold predictions to choose the post-processing on: "
                               "submit with folds (--folds all,full) once, which saves it")
        params = json.loads(saved.read_text())
        console.echo(f"post-processing from {saved}: {params}")
        return params
    parts = cv["oof"]
    chosen = search_sample(sum(map(len, parts)), config.seed)
    params = comp.kind.search_postprocess(comp, sampled_chunks(parts, chosen))
    _io.write_text(saved, json.dumps(params, indent=2) + "\n")
    console.echo(f"post-processing chosen on out-of-fold predictions: {params}")
    return params


def sampled_chunks(parts: list[oof.OOF], rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(targets, probabilities) chunks of the ``rows`` (indices into the folds' OOF files, in order,
    sorted) read from the memory-mapped files a chunk at a time."""
    start = 0
    for part in parts:
        inside = rows[(rows >= start) & (rows < start + len(part))] - start
        if len(inside):
            yield from part.chunks(inside)
        start += len(part)


def packed_cv(packed: dict[str, Any], folds: list[int]) -> dict[str, Any]:
    """The CV a pack recorded (its ``packed.json``); the overall score only for the folds it was recorded on."""
    scores = {int(k): score for k, score in packed["fold_scores"].items()}
    return {"score": packed["cv_score"] if sorted(folds) == sorted(packed["folds"]) else None,
            "folds": {k: scores[k] for k in folds}}


def search_sample(count: int, seed: int, limit: int = SEARCH_LIMIT) -> np.ndarray:
    """Indices of at most ``limit`` out-of-fold images for the post-processing search.

    A whole SIIM OOF stack (10k images at 512 px) is gigabytes; a seeded sample of a thousand
    images picks the same thresholds within noise, in seconds.
    """
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def submission_rows(comp: Competition, config: Config, root: Path, run_dir: Path, models: list[str],
                    test_table: Any, view_mode: str, device: str | None, batch_size: int | None,
                    params: dict[str, Any] | None, checkpoint: str = "best.pt",
                    held_out: HeldOutScore | None = None) -> Any:
    """The submission frame, a batch of test images at a time: predicted by every model, merged,
    post-processed with ``params`` and turned into rows by ``comp.submission``, so memory holds one
    batch of maps (and the rows), whatever the size of the test set. ``held_out`` (a labelled test
    set) gathers each batch's probabilities for the test score."""
    import pandas as pd

    frames, start = [], 0
    for probabilities in _predict.predict_batches(comp, config, root, run_dir, models, test_table, view_mode,
                                                  device, batch_size, checkpoint):
        rows = test_table.iloc[start:start + len(probabilities)].reset_index(drop=True)
        predictions = comp.kind.postprocess(probabilities, params)
        if held_out is not None:
            held_out.add(probabilities, start)
        frames.append(comp.submission(rows, predictions))
        start += len(probabilities)
    if not frames:
        raise CompkitError(f"{comp.name}'s test table has no rows: nothing to predict")
    return pd.concat(frames, ignore_index=True)


class HeldOutScore:
    """The score of a labelled test set (``Competition.test_targets``), gathered a batch at a time: per-sample
    probabilities are kept ((N, C) is small); for maps only each image's score (``Competition.image_scores``),
    so no stack of maps is held when the metric is a mean over images."""

    def __init__(self, comp: Competition, targets: np.ndarray) -> None:
        self.comp, self.targets, self.parts = comp, np.asarray(targets), []
        self.per_image = comp.image_scores()

    @classmethod
    def for_test(cls, comp: Competition, root: Path, test_table: Any) -> HeldOutScore | None:
        """One for ``comp``'s test set when it is labelled, else None."""
        targets = comp.test_targets(root)
        if targets is None:
            return None
        if len(targets) != len(test_table):
            raise CompkitError(f"{comp.name}: test_targets has {len(targets)} rows, the test table {len(test_table)}")
        return cls(comp, targets)

    def add(self, probabilities: np.ndarray, start: int) -> None:
        """The probabilities of test rows ``start:start + B``, (B, C) or (B, H, W)."""
        if self.per_image is not None:
            probabilities = self.per_image(self.targets[start:start + len(probabilities)], probabilities)
        else:
            probabilities = self.comp.kind.kept(probabilities)
        self.parts.append(probabilities)

    def score(self) -> float:
        values = np.concatenate(self.parts)
        return float(values.mean()) if self.per_image is not None else float(self.comp.score(self.targets, values))

    def report(self) -> float:
        """Print the test score (and, for classes, the confusion matrix); returns the score."""
        from compkit.metrics import confusion_table

        score = self.score()
        console.echo(f"test {self.comp.metric} {score:.5f} on the held-out split ({len(self.targets)} samples)")
        if self.comp.kind.one_label and self.targets.ndim == 1:
            console.echo(confusion_table(self.targets, np.concatenate(self.parts), self.comp.classes))
        return score


def code_version(comp: Competition) -> dict[str, str]:
    """The installed versions of compkit and of the competition's plugin, and for each that runs from a
    git checkout the commit of that checkout (not of the working folder)."""
    import sys

    import compkit

    reg = registry.get()
    plugin = reg.manager.plugins.get(reg.owners["competition"].get(comp.name, ""), None)
    sources = {"compkit": (compkit.__version__, Path(compkit.__file__).parent)}
    if plugin is not None:
        module = sys.modules.get(type(comp).__module__)
        sources[plugin.distribution] = (plugin.version, Path(module.__file__).parent if module else None)
    version = {}
    for name, (installed, folder) in sources.items():
        version[name] = installed
        commit = _commit(folder) if folder else None
        if commit:
            version[f"{name} commit"] = commit
    return version


def _commit(folder: Path) -> str | None:
    """The short commit of the git checkout holding ``folder`` ("+dirty" with local changes), or None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return None
