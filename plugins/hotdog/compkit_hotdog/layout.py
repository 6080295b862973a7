"""The raw layout hotdog/{train,test}/{hotdog,not-hotdog}/*.png as tables, and the Kaggle-style test files.

Test ids are anonymous numbers 1..N given in a fixed shuffled order, so a submission carries no
class in its ids; test.csv maps them to images and test_labels.csv keeps the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from compkit import _io
from compkit.errors import CompkitError
from compkit_hotdog import CLASSES

FOLDER = "hotdog"  # what hotdog.zip unpacks to
SUFFIXES = (".png", ".jpg", ".jpeg")
ORDER_SEED = 0


def _natural(path: Path) -> tuple:
    """Sort key: 2.png before 10.png."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def image_table(root: Path, split: str) -> pd.DataFrame:
    """One row per image of ``split`` (train|test): ``id`` (class/stem), ``label``, ``target``, ``path``."""
    rows = []
    for target, label in enumerate(CLASSES):
        folder = root / FOLDER / split / label
        if not folder.is_dir():
            raise CompkitError(f"{folder} is missing; run: compkit download hotdog (or --demo)")
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES), key=_natural)
        rows += [(f"{label}/{p.stem}", label, target, p.relative_to(root).as_posix()) for p in files]
    table = pd.DataFrame(rows, columns=["id", "label", "target", "path"])
    if table.empty:
        raise CompkitError(f"no images under {root / FOLDER / split}; run: compkit download hotdog --force")
    return table


def write_test_index(root: Path) -> None:
    """Write test.csv (id,path), sample_submission.csv (id,label) and test_labels.csv (id,label).

    Written once: existing files are kept, so ids never change under a submission.
    """
    files = [root / name for name in ("test.csv", "sample_submission.csv", "test_labels.csv")]
    if all(path.is_file() for path in files):
        return
    test = image_table(root, "test")
    order = np.random.default_rng(ORDER_SEED).permutation(len(test))
    test = test.iloc[order].reset_index(drop=True)
    test["id"] = [str(i) for i in range(1, len(test) + 1)]
    _io.write_csv(root / "test.csv", test[["id", "path"]])
    _io.write_csv(root / "sample_submission.csv", test[["id"]].assign(label=CLASSES[0]))
    _io.write_csv(root / "test_labels.csv", test[["id", "label"]])
