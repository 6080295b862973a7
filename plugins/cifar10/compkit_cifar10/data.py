"""Unpacking train.7z / test.7z once, the decode-once uint8 image cache, and the Dataset reading it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from compkit import _io, archives
from compkit.cache import resized_images
from compkit.datasets import ArrayDataset
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


def positions(full_ids: pd.Series, ids: pd.Series) -> np.ndarray:
    """Row of each of ``ids`` in ``full_ids`` (int64 (N,)); every id must be there."""
    found = pd.Index(full_ids).get_indexer(ids)
    if (found < 0).any():
        missing = list(pd.Series(ids)[found < 0][:3])
        raise CompkitError(
            f"ids {missing} are not in the competition's table; the data changed under the run"
        )
    return found.astype(np.int64)


class CachedDataset(ArrayDataset):
    """Rows ``rows`` of a cached image array; item ``i`` is image ``images[rows[i]]``.

    Item: ``{"image": float32 [3, S, S], "target": int64 []}`` (no target at test).
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: np.ndarray | None, transform) -> None:
        super().__init__(images, targets, transform, task="classification")
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> np.ndarray:
        return np.array(self.images[self.rows[index]])  # a writable copy, not a view of the read-only file
