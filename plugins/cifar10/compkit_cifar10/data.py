"""Unpacking train.7z / test.7z once, the decode-once uint8 image cache, and the Dataset reading it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from compkit import _io, archives
from compkit.cache import resized_images
from compkit.errors import CompkitError

ARCHIVES = ("train.7z", "test.7z")  # unpack to train/1..50000.png and test/1..300000.png
STATE_FOLDER = ".compkit"  # where compkit.kaggle keeps its download markers too
CACHE_FOLDER = "cache"


def _stamp(archive: Path) -> dict[str, int]:
    stat = archive.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def unpack(root: Path) -> list[Path]:
    """Extract each archive of ``ARCHIVES`` in ``root`` into ``root``, unless already done; returns those extracted.

    A marker per archive records its size and mtime after a complete extraction, so a second call
    (or one after an interrupted extraction, which leaves no marker) does the right thing.
    """
    done = []
    for name in ARCHIVES:
        archive, marker = root / name, root / STATE_FOLDER / f"unpacked-{name}.json"
        if not archive.is_file():
            continue
        folder = root / name.removesuffix(".7z")
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == _stamp(archive) and folder.is_dir():
                continue
        except (OSError, ValueError):
            pass
        print(f"unpacking {archive} (once) ...", flush=True)
        archives.extract(archive, root)
        if not folder.is_dir():
            raise CompkitError(f"{archive} did not unpack to {folder}/; is it the competition's archive?")
        _io.write_text(marker, json.dumps(_stamp(archive)) + "\n")
        done.append(archive)
    return done


def cached_images(root: Path, table: pd.DataFrame, stage: str, size: int) -> np.ndarray:
    """Every image of ``table`` at ``size``: a read-only uint8 memmap (N, size, size, 3), built once.

    The whole train (or test) table is cached, never a fold's subset, so all folds share one file;
    300,000 test PNGs take about 0.9 GB at 32 px.
    """
    name = "test" if stage == "test" else "train"
    return resized_images([root / path for path in table["path"]], size, root / CACHE_FOLDER, name=name)
