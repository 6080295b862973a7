"""The data verbs: ``compkit download`` (the real data, or the demo twin), ``folds`` and ``baseline``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from compkit import _io, console, folds
from compkit.competition import Competition
from compkit.errors import CompkitError
from compkit.pipeline import _common
from compkit.places import Places


def download(name: str, where: Places, *, demo: bool = False, force: bool = False, seed: int = 0) -> Path:
    """Fetch the real data (or write the demo twin) into data/NAME; returns the folder."""
    comp = _common.competition(name)
    root = where.data_root(comp.data_name or name)  # a variant fills (and reads) its parent's folder
    if demo:
        return _make_demo(comp, root, force=force, seed=seed)
    if force and (root / ".demo").exists():
        shutil.rmtree(root)
    if (root / ".demo").exists():
        raise CompkitError(f"{root} holds demo data; pass --force to replace it with the real data")
    made = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    from compkit import kaggle

    try:
        with kaggle.forced(force):
            comp.download(root)
    except BaseException:
        if made and not any(path.is_file() for path in root.rglob("*")):
            shutil.rmtree(root, ignore_errors=True)  # a failed first download leaves no empty data/NAME
        raise
    return root


def _make_demo(comp: Competition, root: Path, *, force: bool, seed: int) -> Path:
    """Write the demo into a temporary folder, then move it into place: never half a dataset.

    One process at a time per data folder (a lock beside it); staging folders left by a killed run
    are removed, and a failed one removes its own.
    """
    with _io.locked(root.with_name(f".{root.name}.lock")):
        _io.remove_stale_staging(root, "demo")
        if root.exists() and any(root.iterdir()):
            marker = root / ".demo"
            if marker.exists() and not force:
                made = marker.read_text(encoding="utf-8").strip()
                if made != f"seed={seed}":
                    raise CompkitError(f"{root} holds the demo made with {made}; pass --force to remake it "
                                       f"with seed={seed}")
                console.echo(f"{root} already holds the demo data; nothing to do (--force remakes it)")
                return root
            if not force:
                raise CompkitError(f"{root} already holds data; pass --force to replace it with demo data")
        with _io.staging(root, "demo") as staging:
            comp.make_demo(staging, seed)
            (staging / ".demo").write_text(f"seed={seed}\n", encoding="utf-8")
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
    console.echo(f"wrote demo data for {comp.name} to {root}")
    return root


def make_folds(name: str, where: Places, *, n_folds: int = 5, seed: int = 42, force: bool = False) -> Path:
    """Write data/NAME/folds.csv (the competition's own split when it provides one) and print the size of
    each fold."""
    comp = _common.competition(name)
    root = _common.data_root(comp, where)
    split = _common.competition_split(comp, _common.table(comp, root, "train"), n_folds, seed, root)
    name_of_file = folds.file_name(comp)
    written = folds.write(root, split, force=force, name=name_of_file)
    sizes = ", ".join(("train only" if k == folds.TRAIN_ONLY else str(k)) + f": {n}"
                      for k, n in split["fold"].value_counts().sort_index().items())
    fixed = comp.fixed_split(_common.table(comp, root, "train"), root) is not None
    kind = "the competition's own split" if fixed else ""
    console.echo(f"{'wrote' if written else 'unchanged (same split)'} {root / name_of_file} ({sizes})"
                 + (f"; {kind}, so --n-folds is not used" if kind else ""))
    return root / name_of_file


def baseline(name: str, where: Places, *, size: int = 32, trees: int = 200) -> dict[str, Any]:
    """The random-forest floor on the competition's folds (``compkit.baseline``); prints and returns its CV."""
    from compkit import baseline as forest

    comp = _common.competition(name)
    root = _common.data_root(comp, where)
    rows, _, assignment = _common.fold_rows(comp, root, comp.defaults)
    result = forest.cross_validate(comp, rows, assignment, root, size=size, trees=trees)
    console.echo(f"baseline (random forest, {trees} trees, {size}x{size} pixels): CV {comp.metric} "
                 f"{result['score']:.5f}\n" + "\n".join(f"  fold {k}: {score:.5f}" for k, score in result["folds"].items()))
    return result
