"""Out-of-fold predictions on disk (``oof.npz``), compact and read in chunks.

A fold's ``oof.npz`` is a plain uncompressed ``np.savez`` archive: ``ids`` (str), ``probabilities`` and
``targets``. Per-sample outputs (classification) keep float16 probabilities. Dense outputs (a map per
image) store probabilities as uint8 quantised to 1/255 (``scale`` = 255 in the file) and integral
targets (masks) as uint8: 2 bytes per pixel instead of 4 (float16 both), and the search and the CV
read them back a chunk of images at a time from a memory map, so neither holds a float copy of the
whole stack. Large members are read from the file when indexed (``Stored``), not memory-mapped:
the pages of a mapping stay in the process's resident set once touched, so a CV over a 5 GB
stack would look (and, next to other work, act) like 5 GB of memory. Torch-free, like ``compkit runs``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compkit import _io
from compkit.errors import CompkitError

SCALE = 255  # dense probabilities p are stored as round(p * SCALE) in uint8
CHUNK_PIXELS = 1 << 24  # about this many pixels per chunk read back (64 MiB as float32)
SMALL_MEMBER = 1 << 20  # members up to this many bytes (ids, classification) are read whole


def quantise(probabilities: np.ndarray) -> np.ndarray:
    """uint8 round(p * 255) of probabilities in [0, 1]."""
    return np.rint(np.clip(probabilities, 0.0, 1.0) * SCALE).astype(np.uint8)


def stored_epoch(path: Path) -> int | None:
    """The epoch an oof.npz was written for (None: no file, an unreadable one, or one without it)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return int(archive["epoch"]) if "epoch" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def is_dense(array: np.ndarray) -> bool:
    """A map per sample ((N, H, W) or (N, C, H, W)) rather than a vector per sample."""
    return array.ndim >= 3


def write(path: Path, ids: Sequence[str] | np.ndarray, probabilities: np.ndarray, targets: np.ndarray,
          epoch: int | None = None, scale: int | None = SCALE) -> None:
    """Write ``path`` atomically: dense probabilities quantised (unless already uint8), masks as uint8;
    ``epoch``: the training epoch the predictions come from (kept in the file). uint8 ``probabilities``
    are quantised ones with ``scale`` = 255, or with ``scale`` None decisions (class indices) kept as such."""
    ids = np.asarray(ids).astype(str)
    members = {"ids": ids}
    if epoch is not None:
        members["epoch"] = np.array(epoch)
    if is_ragged(probabilities):  # detection: (score, label, box) rows per image, and (label, box) targets
        members |= _flat("probabilities", probabilities) | _flat("targets", targets)
    else:
        members |= _stored_members(probabilities, targets, scale)
    with _io.atomic_open(path, "wb") as handle:  # a file object: np.savez would append .npz to a path
        np.savez(handle, **members)


def _stored_members(probabilities: np.ndarray, targets: np.ndarray, scale: int | None) -> dict[str, np.ndarray]:
    members = {"targets": _compact_targets(targets, dense=is_dense(probabilities))}
    if probabilities.dtype == np.uint8 and scale is None:
        return members | {"probabilities": probabilities}  # class indices
    if probabilities.dtype == np.uint8:
        return members | {"probabilities": probabilities, "scale": np.array(SCALE)}
    if is_dense(probabilities):
        return members | {"probabilities": quantise(probabilities), "scale": np.array(SCALE)}
    return members | {"probabilities": probabilities.astype(np.float16)}


def is_ragged(array: np.ndarray) -> bool:
    """One array per sample of its own length (detection's boxes): a 1-d object array."""
    return array.dtype == object


def _flat(name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """A ragged array as two plain members (no pickles in oof.npz): NAME, the rows concatenated
    (float32 [sum K, columns]), and NAME_offsets (int64 [N + 1]): sample i is rows offsets[i]:offsets[i + 1]."""
    arrays = [np.asarray(row, dtype=np.float32) for row in rows]
    columns = arrays[0].shape[1] if arrays and arrays[0].ndim == 2 else 0
    flat = np.concatenate(arrays).reshape(-1, columns) if arrays else np.zeros((0, 0), np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(row) for row in arrays])]).astype(np.int64)
    return {name: flat, f"{name}_offsets": offsets}


def _unflat(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    flat, offsets = np.asarray(flat), np.asarray(offsets)
    rows = np.empty(len(offsets) - 1, dtype=object)
    for index in range(len(rows)):
        rows[index] = flat[offsets[index]:offsets[index + 1]]
    return rows


def _compact_targets(targets: np.ndarray, dense: bool) -> np.ndarray:
    if not np.issubdtype(targets.dtype, np.floating):
        return targets if not dense or targets.dtype == np.uint8 or targets.max(initial=0) > 255 else targets.astype(np.uint8)
    if dense and np.array_equal(targets, np.rint(targets)) and targets.min(initial=0) >= 0 and targets.max(initial=0) <= 255:
        return targets.astype(np.uint8)  # masks: exact in uint8
    return targets.astype(np.float16)  # soft labels; halves the file


class Stored:
    """A C-order array stored uncompressed at ``offset`` in ``path``; indexing by rows reads just those
    rows from the file (sorted index arrays in contiguous runs), ``np.asarray`` reads it all."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)

    def __getitem__(self, rows: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self._read(int(rows), 1)[0]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            block = self._read(start, max(0, stop - start))
            return block if step == 1 else block[::step]
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, *self.shape[1:]), self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # contiguous runs
        runs = np.split(rows, breaks)
        return np.concatenate([self._read(int(run[0]), len(run)) for run in runs])

    def _read(self, start: int, count: int) -> np.ndarray:
        if start < 0 or start + count > len(self):
            raise IndexError(f"rows {start}..{start + count} of {len(self)}")
        with self.path.open("rb") as handle:
            handle.seek(self.offset + start * self.row_items * self.dtype.itemsize)
            values = np.fromfile(handle, dtype=self.dtype, count=count * self.row_items)
        if len(values) != count * self.row_items:
            raise ValueError(f"{self.path} is shorter than its header says")
        return values.reshape(count, *self.shape[1:])


@dataclass
class OOF:
    """One fold's out-of-fold predictions; large arrays are ``Stored`` (read on indexing)."""

    path: Path
    ids: np.ndarray
    raw_probabilities: np.ndarray | Stored  # as stored: float16, uint8 with ``scale``, or uint8 class indices
    targets: np.ndarray | Stored
    scale: int | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.raw_probabilities.nbytes + self.targets.nbytes

    def probabilities(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """float32 probabilities of ``rows`` (all by default), dequantised; stored class indices as they are."""
        raw = np.asarray(self.raw_probabilities[rows])
        if is_ragged(raw):
            return raw
        if self.scale:
            return raw.astype(np.float32) / self.scale
        return raw if np.issubdtype(raw.dtype, np.integer) else raw.astype(np.float32)

    def chunks(self, rows: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(targets, float32 probabilities) of ``rows`` (all by default), a bounded number of pixels at a time."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        step = max(1, CHUNK_PIXELS // max(1, int(np.prod(self.raw_probabilities.shape[1:]))))
        for start in range(0, len(rows), step):
            chosen = rows[start:start + step]
            selector = slice(int(chosen[0]), int(chosen[-1]) + 1) if _contiguous(chosen) else chosen
            yield np.asarray(self.targets[selector]), self.probabilities(selector)


def load(path: Path) -> OOF:
    """Read ``path`` (an ``oof.npz``); large members are left in the file until indexed."""
    if not path.is_file():
        raise CompkitError(f"no out-of-fold predictions at {path}: train that fold first (it writes oof.npz)")
    try:
        members = _members(path)
        scale = int(members["scale"][()]) if "scale" in members else None
        if scale not in (None, SCALE):
            raise ValueError(f"scale {scale}, not {SCALE}")
        probabilities, targets = members["probabilities"], members["targets"]
        if "probabilities_offsets" in members:  # ragged (detection): small, read whole
            probabilities = _unflat(probabilities, members["probabilities_offsets"])
            targets = _unflat(targets, members["targets_offsets"])
        return OOF(path, np.asarray(members["ids"]), probabilities, targets, scale)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise CompkitError(f"{path} is damaged or not an oof.npz ({error}); train that fold again") from None


def _members(path: Path) -> dict[str, np.ndarray]:
    """Each member of an .npz by name: ``Stored`` for a large uncompressed member of a fixed-size dtype
    in C order, else the array read as np.load reads it."""
    members = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as handle:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            large = info.compress_type == zipfile.ZIP_STORED and info.file_size > SMALL_MEMBER
            mapped = _stored(path, handle, info) if large else None
            if mapped is None:
                with archive.open(info) as member:
                    mapped = np.lib.format.read_array(member, allow_pickle=False)
            members[name] = mapped
    return members


def _stored(path: Path, handle, info: zipfile.ZipInfo) -> Stored | None:
    handle.seek(info.header_offset)
    header = handle.read(30)  # the local file header; its name and extra lengths can differ from the central's
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return None
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    handle.seek(start)
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        return None
    shape, fortran, dtype = readers[version](handle)
    if dtype.hasobject or dtype.kind == "U" or fortran or not shape:
        return None
    return Stored(path, handle.tell(), shape, dtype)


def _contiguous(rows: np.ndarray) -> bool:
    return len(rows) > 0 and int(rows[-1]) - int(rows[0]) + 1 == len(rows) and bool(np.all(np.diff(rows) == 1))
