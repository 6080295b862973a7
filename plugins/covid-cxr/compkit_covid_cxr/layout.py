"""The database's folders as tables, and the held-out test split drawn once and kept in split.csv.

Two layouts are known: current versions unpack to ``COVID-19_Radiography_Dataset/<Class>/images/*.png``
(masks beside them in ``<Class>/masks/``, not used), older ones to ``COVID-19 Radiography Database/<Class>/*.png``
with ``COVID`` (or ``COVID-19``), ``NORMAL`` and ``Viral Pneumonia``. Folder names are matched to the classes
ignoring case, spaces, ``-`` and ``_``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from compkit import _io
from compkit.errors import CompkitError
from compkit_covid_cxr import CLASSES

TOP_FOLDERS = ("COVID-19_Radiography_Dataset", "COVID-19 Radiography Database")  # current, older
ALIASES = {"covid": "COVID", "covid19": "COVID", "lungopacity": "Lung_Opacity", "normal": "Normal",
           "viralpneumonia": "Viral Pneumonia"}
SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FILE = "split.csv"  # id,split (train|test): the held-out split, drawn once
TEST_FRACTION = 0.15  # of each class
SPLIT_SEED = 0
EXPECTED = (f"{TOP_FOLDERS[0]}/<class>/images/*.png (current versions) or {TOP_FOLDERS[1]}/<class>/*.png "
            f"(older), the classes being folders named like {', '.join(CLASSES)} (NORMAL, COVID-19 also match)")


def canonical(folder_name: str) -> str | None:
    """The class a folder name stands for (``NORMAL`` -> ``Normal``), None for an unknown name."""
    return ALIASES.get(re.sub(r"[^a-z0-9]", "", folder_name.lower()))


def top_folder(root: Path) -> Path:
    """The folder holding the class folders: one of ``TOP_FOLDERS`` under ``root``, or ``root`` itself."""
    found = [root / name for name in TOP_FOLDERS if (root / name).is_dir()]
    if len(found) > 1:
        raise CompkitError(f"{root} holds two versions of the database ({found[0].name}/ and {found[1].name}/); "
                           "remove one, or run: compkit download covid-cxr --force")
    if found:
        return found[0]
    if any(canonical(path.name) for path in root.iterdir() if path.is_dir()):
        return root  # class folders put straight into the data folder by hand
    raise CompkitError(f"no class folders in {root}: expected {EXPECTED}; run: compkit download covid-cxr "
                       "(or --demo)")


def class_folders(top: Path) -> dict[str, Path]:
    """Each class present under ``top``, in ``CLASSES`` order, with its folder; an unknown folder is an error."""
    folders: dict[str, Path] = {}
    for path in sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = canonical(path.name)
        if label is None:
            raise CompkitError(f"{path}: not a class folder of the COVID-19 Radiography Database; expected one of "
                               f"{', '.join(CLASSES)} (NORMAL, COVID-19 also match)")
        if label in folders:
            raise CompkitError(f"{folders[label]} and {path} are both class {label}; keep one")
        folders[label] = path
    if len(folders) < 2:
        raise CompkitError(f"{top} has {len(folders)} class folder(s) ({', '.join(folders) or 'none'}); "
                           f"expected at least two of {', '.join(CLASSES)}")
    return {label: folders[label] for label in CLASSES if label in folders}


def _images(folder: Path) -> list[Path]:
    """The image files of a class folder: ``images/*`` in current versions, else the files in it."""
    source = folder / "images" if (folder / "images").is_dir() else folder
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise CompkitError(f"{source} holds no images; expected {folder.name}/images/*.png (current versions) or "
                           f"{folder.name}/*.png (older)")
    return files


def image_table(root: Path) -> pd.DataFrame:
    """Every labelled image: ``id`` (<class>/<stem>), ``label``, ``target`` (index in ``CLASSES``), ``path``."""
    root = Path(root)
    rows = []
    for label, folder in class_folders(top_folder(root)).items():
        target = CLASSES.index(label)
        rows += [(f"{label}/{p.stem}", label, target, p.relative_to(root).as_posix()) for p in _images(folder)]
    return pd.DataFrame(rows, columns=["id", "label", "target", "path"])


def draw_split(table: pd.DataFrame) -> pd.DataFrame:
    """``id``, ``split``: ``TEST_FRACTION`` of each class (at least one image) is ``test``, the rest ``train``.

    Deterministic: ids are sorted within each class before the seeded shuffle.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    test: list[str] = []
    for _, ids in table.groupby("target")["id"]:  # classes in index order
        ordered = np.sort(ids.to_numpy().astype(str))
        count = max(1, round(TEST_FRACTION * len(ordered)))
        test += ordered[rng.permutation(len(ordered))[:count]].tolist()
    chosen = set(test)
    ids = sorted(table["id"])
    return pd.DataFrame({"id": ids, "split": ["test" if id_ in chosen else "train" for id_ in ids]})


def split_table(root: Path) -> pd.DataFrame:
    """The image table with a ``split`` column from split.csv, which is drawn and written if missing and
    never redrawn: a changed set of images is an error."""
    root = Path(root)
    table = image_table(root)
    path = root / SPLIT_FILE
    if not path.is_file():
        _io.write_csv(path, draw_split(table))
    split = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(split.columns) != ["id", "split"] or not split["split"].isin(["train", "test"]).all():
        raise CompkitError(f"{path}: expected columns id,split with split train or test; delete it to draw the "
                           "split again")
    gone, new = set(split["id"]) - set(table["id"]), set(table["id"]) - set(split["id"])
    if gone or new:
        example = sorted(new or gone)[0]
        raise CompkitError(f"{path} was drawn for other images ({len(new)} images not in it, {len(gone)} in it "
                           f"gone, e.g. {example}): the data changed; delete {path} to draw a new split (test "
                           "scores before and after are then not comparable)")
    return table.merge(split, on="id", how="left")


def ensure_split(root: Path) -> None:
    """Write split.csv now (download / demo time) if it is missing."""
    split_table(root)
