"""Predict a test set with a run's folds, average, post-process, write and check the submission."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from compkit import _io, _train, postprocess, registry, submission, tta
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import echo

SEARCH_LIMIT = 1000


def make_submission(comp: Competition, root: Path, run_dir: Path, out_dir: Path, *, fold_spec: str = "all",
                    tta: str | None = None, device: str | None = None, batch_size: int | None = None) -> Path:
    """Write ``out_dir/<stamp>.csv`` and its ``.json`` sidecar; returns the CSV path."""
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    folds = choose_folds(run_dir, fold_spec)
    view_mode = tta or config.tta
    cv = cross_validation(comp, run_dir, folds)
    echo(f"CV {comp.metric}: {cv['score']:.5f} over folds {', '.join(map(str, folds))}"
         + "".join(f"\n  fold {k}: {s:.5f}" for k, s in cv["folds"].items()))
    params = None
    if comp.task == "segmentation":
        chosen = search_sample(len(cv["targets"]), config.seed)
        params = postprocess.search(cv["probabilities"][chosen], cv["targets"][chosen], triple=comp.triple_threshold)
        _io.write_text(run_dir / "postprocess.json", json.dumps(params, indent=2) + "\n")
        echo(f"post-processing chosen on out-of-fold predictions: {params}")
    test_table = comp.test_table(root)
    probabilities = predict(comp, config, root, run_dir, folds, test_table, view_mode, device, batch_size)
    predictions = postprocess.apply(probabilities, params) if params else probabilities
    frame = comp.submission(test_table, predictions)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # The sidecar claims the name (two submits in one second get two) and is written first: a kill
    # in between leaves a sidecar without its CSV, never a CSV nobody can trace back to its run.
    with _io.new_file(out_dir, stamp, ".json", beside=(".csv",)) as sidecar_path:
        sidecar = {
            "competition": comp.name, "run": run_dir.name, "folds": folds, "tta": view_mode,
            "cv_score": cv["score"], "fold_scores": cv["folds"], "metric": comp.metric, "postprocess": params,
            "config": config.to_dict(), "rows": len(frame), "code_version": code_version(comp),
        }
        _io.write_text(sidecar_path, json.dumps(sidecar, indent=2, default=str) + "\n")
        path = sidecar_path.with_suffix(".csv")
        submission.write(frame, path, comp.read_sample(root), comp.labels())  # checked, then written atomically
    return path


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


def cross_validation(comp: Competition, run_dir: Path, folds: list[int]) -> dict[str, Any]:
    """The CV score from the out-of-fold predictions of ``folds``, overall and per fold."""
    parts = [np.load(run_dir / f"fold{k}" / "oof.npz", allow_pickle=False) for k in folds]
    scores = {k: comp.score(p["targets"], p["probabilities"].astype(np.float32)) for k, p in zip(folds, parts)}
    probabilities = np.concatenate([p["probabilities"] for p in parts]).astype(np.float32)
    targets = np.concatenate([p["targets"] for p in parts])
    return {"score": comp.score(targets, probabilities), "folds": scores,
            "probabilities": probabilities, "targets": targets}


def search_sample(count: int, seed: int, limit: int = SEARCH_LIMIT) -> np.ndarray:
    """Indices of at most ``limit`` out-of-fold images for the post-processing search.

    A whole SIIM OOF stack (10k images at 512 px) is gigabytes; a seeded sample of a thousand
    images picks the same thresholds within noise, in seconds.
    """
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def predict(comp: Competition, config: Config, root: Path, run_dir: Path, folds: list[int], test_table: Any,
            view_mode: str, device: str | None, batch_size: int | None) -> np.ndarray:
    """The mean over folds of each fold's TTA-merged probabilities: (N, C) or (N, H, W)."""
    loader = _train.loader(comp, test_table, root, "test", config, batch_size=batch_size, device=device)
    views = tta.views(view_mode)
    total = None
    for fold in folds:
        model = registry.get().model(config.model, comp.num_classes, comp.in_channels, pretrained=False)
        engine = _train.make_engine(comp, config, model, device=device)
        engine.load(run_dir / f"fold{fold}" / "best.pt")
        probabilities = engine.predict(loader, views=views)
        total = probabilities if total is None else total + probabilities
        echo(f"predicted {len(test_table)} test samples with fold {fold} (tta {view_mode})")
    return total / len(folds)


def code_version(comp: Competition) -> dict[str, str]:
    """compkit's version, the competition plugin's version and the git commit, when known."""
    from compkit import __version__

    reg = registry.get()
    plugin = reg.manager.plugins.get(reg.owners["competition"].get(comp.name, ""), None)
    version = {"compkit": __version__}
    if plugin is not None:
        version[plugin.distribution] = plugin.version
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        version["git"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return version
