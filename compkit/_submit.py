"""Predict a test set with a run's folds, average, post-process, write and check the submission."""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compkit import _distributed, _io, _train, oof, postprocess, registry, submission, tta
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import echo, table
from compkit.runs import cross_validation, run_config

SEARCH_LIMIT = 1000
CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}  # submit --checkpoint
PACKED = "packed.json"  # in a run folder compkit pack wrote: the CV recorded when packing


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
    folds, full = choose_models(run_dir, fold_spec)
    trained = fold_records(run_dir, folds, allow_unfinished)
    if full:
        trained |= {"full": _full_record(run_dir, allow_unfinished)}
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
        echo(f"CV {comp.metric} recorded when packed: {score} over folds {', '.join(map(str, folds))}\n"
             + fold_table(cv["folds"], trained))
    elif folds:
        cv = cross_validation(comp, run_dir, folds)
        echo(f"CV {comp.metric}: {cv['score']:.5f} over folds {', '.join(map(str, folds))}\n"
             + fold_table(cv["folds"], trained))
    else:
        echo("no CV: the full fit has no validation rows (add folds to see one: --folds all,full)")
    params = None
    if comp.kind.searches_postprocess and not comp.output_files:
        params = _postprocess(comp, config, run_dir, cv)
    cv.pop("oof", None)  # the out-of-fold maps are not needed while the test set is predicted
    test_table = table(comp, root, "test")
    held_out = HeldOutScore.for_test(comp, root, test_table)
    if checkpoint == "last":
        echo("predicting with each model's last.pt (the last epoch trained); the CV above is best.pt's")
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
        submission.write(frame, path, comp.read_sample(root), comp.labels())  # checked, then written atomically
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
    echo(f"wrote {len(names)} file(s) into {folder}")
    return folder


def decided_rows(comp: Competition, config: Config, root: Path, run_dir: Path, models: list[str],
                 test_table: Any, view_mode: str, device: str | None, batch_size: int | None,
                 checkpoint: str = "best.pt", held_out: HeldOutScore | None = None) -> list[np.ndarray]:
    """Per test row, what a file output receives (``Task.decided``): kept one array per image, so images
    of different sizes need no common shape."""
    rows, start = [], 0
    for probabilities in predict_batches(comp, config, root, run_dir, models, test_table, view_mode, device,
                                         batch_size, checkpoint):
        if held_out is not None:
            held_out.add(probabilities, start)
        rows.extend(comp.kind.decided(probability) for probability in probabilities)
        start += len(probabilities)
    if not rows:
        raise CompkitError(f"{comp.name}'s test table has no rows: nothing to predict")
    return rows


def choose_models(run_dir: Path, spec: str) -> tuple[list[int], bool]:
    """The folds and whether the full fit are in ``spec`` ("all", "0,2", "full", "all,full")."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    full = "full" in parts
    rest = ",".join(part for part in parts if part != "full")
    if full and not (run_dir / "full" / "best.pt").is_file():
        raise CompkitError(f"run {run_dir.name} has no full fit (full/best.pt): make it with compkit train NAME "
                           f"--full --run-name {run_dir.name}")
    return (choose_folds(run_dir, rest) if rest or not full else []), full


def _full_record(run_dir: Path, allow_unfinished: bool) -> dict[str, Any] | None:
    path = run_dir / "full" / "fold.json"
    if not path.is_file() and not allow_unfinished:
        raise CompkitError(f"the full fit of run {run_dir.name} did not finish training: resume it with compkit train "
                           f"NAME --full --resume --run-name {run_dir.name}, or use it as it is with --allow-unfinished")
    return json.loads(path.read_text()) if path.is_file() else None


def _postprocess(comp: Competition, config: Config, run_dir: Path, cv: dict[str, Any]) -> dict[str, Any]:
    """Post-processing chosen on the out-of-fold predictions (saved as postprocess.json), or the saved choice
    when no fold is submitted."""
    saved = run_dir / "postprocess.json"
    if config.mask_threshold:  # fixed by the recipe: no search
        params = {"threshold": config.mask_threshold, "min_area": 0}
        echo(f"post-processing fixed by the config (mask_threshold): {params}")
        return params
    if "oof" not in cv:
        if not saved.is_file():
            raise CompkitError("the full fit alone has no out-of-fold predictions to choose the post-processing on: "
                               "submit with folds (--folds all,full) once, which saves it")
        params = json.loads(saved.read_text())
        echo(f"post-processing from {saved}: {params}")
        return params
    parts = cv["oof"]
    chosen = search_sample(sum(map(len, parts)), config.seed)
    params = postprocess.search_chunks(sampled_chunks(parts, chosen), triple=getattr(comp.kind, "triple_threshold", False))
    _io.write_text(saved, json.dumps(params, indent=2) + "\n")
    echo(f"post-processing chosen on out-of-fold predictions: {params}")
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


def fold_records(run_dir: Path, folds: list[int], allow_unfinished: bool) -> dict[int, dict[str, Any] | None]:
    """Each fold's training record (``fold.json``: epochs, best epoch and score), None if it never ended."""
    from compkit.pipeline import DONE

    records = {}
    for k in folds:
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
    for probabilities in predict_batches(comp, config, root, run_dir, models, test_table, view_mode, device,
                                         batch_size, checkpoint):
        rows = test_table.iloc[start:start + len(probabilities)].reset_index(drop=True)
        predictions = postprocess.apply(probabilities, params) if params else probabilities
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
        echo(f"test {self.comp.metric} {score:.5f} on the held-out split ({len(self.targets)} samples)")
        if self.comp.kind.one_label and self.targets.ndim == 1:
            echo(confusion_table(self.targets, np.concatenate(self.parts), self.comp.classes))
        return score


def predict_batches(comp: Competition, config: Config, root: Path, run_dir: Path, models: list[str],
                    test_table: Any, view_mode: str, device: str | None,
                    batch_size: int | None, checkpoint: str = "best.pt") -> Iterator[np.ndarray]:
    """Per test batch, in order, the mean over ``models`` (fold0, ..., full) of each one's TTA-merged
    probabilities, (B, C) or (B, H, W): the test set is read once and every model predicts each batch."""
    if _distributed.world_size() > 1:
        raise CompkitError("submit predicts in one process; run it without torchrun")
    loader = _train.loader(comp, test_table, root, "test", config, batch_size=batch_size, device=device)
    views = tta.views(view_mode)
    engines = []
    for name in models:
        model = registry.get().model(config.model, comp.num_classes, comp.in_channels, pretrained=False)
        engine = _train.make_engine(comp, config, model, device=device)
        engine.load(run_dir / name / checkpoint)
        engines.append(engine)
    names = ", ".join(name.replace("fold", "fold ") for name in models)
    with engines[0]._progress(loader, f"predict ({len(models)} model{'s' * (len(models) > 1)})") as progress:
        for batch in progress:
            total = None
            for engine in engines:
                probabilities = engine.predict_batch(batch["image"], views)
                total = probabilities if total is None else total + probabilities
            yield (total / len(engines)).cpu().numpy()
    echo(f"predicted {len(test_table)} test samples with {names} (tta {view_mode})")


def predict(comp: Competition, config: Config, root: Path, run_dir: Path, models: list[str], test_table: Any,
            view_mode: str, device: str | None, batch_size: int | None, checkpoint: str = "best.pt") -> np.ndarray:
    """The mean over ``models`` (fold0, ..., full) of each one's TTA-merged probabilities: (N, C) or (N, H, W)."""
    batches = list(predict_batches(comp, config, root, run_dir, models, test_table, view_mode, device, batch_size,
                                   checkpoint))
    return np.concatenate(batches) if batches else np.zeros((0,), dtype=np.float32)


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
