"""Atomic file writes: a temporary name in the same folder, then a rename.

An interrupted run never leaves a half-written checkpoint, table or submission behind.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# torch.save reports a failed write as a RuntimeError from its zip writer, without the errno
TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter", "file write failed")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for lack of space (or quota), torch's included."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL
    return isinstance(error, RuntimeError) and any(mark in str(error) for mark in TORCH_WRITE_FAILED)


def disk_full_message(path: str | os.PathLike | None, *, cleaned: bool = True) -> str:
    """One line naming ``path`` (the working directory's disk when None), its free space and what to do."""
    import shutil

    folder = Path(path).parent if path else Path.cwd()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    what = f"could not write {path}" if path else "a write failed"
    return (f"{what}: the disk is full ({free / 2**20:.0f} MiB free on {folder})"
            + ("; nothing was left half-written" if cleaned else "")
            + ". Free some space, or point COMPKIT_DATA_DIR / COMPKIT_RUNS_DIR / COMPKIT_SUBMISSIONS_DIR at "
            "another disk, then run the command again")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A full disk is a CompkitError naming ``path``; the temporary is removed on every path out.
    """
    from compkit.errors import CompkitError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        if is_disk_full(error):
            raise CompkitError(disk_full_message(path)) from None
        raise
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        tmp.unlink(missing_ok=True)
        raise CompkitError(disk_full_message(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_staging(target: str | os.PathLike, tag: str) -> None:
    """Remove the ``staging(target, tag)`` folders a killed run left beside ``target``."""
    import shutil

    target = Path(target)
    for stale in target.parent.glob(f".{target.name}.{tag}-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staging(target: str | os.PathLike, tag: str) -> Iterator[Path]:
    """A new folder beside ``target`` (``.NAME.TAG-xxxx``) to build it in before it moves into place.

    It is removed on every way out; a full disk is a CompkitError naming ``target``.
    """
    import shutil

    from compkit.errors import CompkitError

    target = Path(target)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}-", dir=target.parent))
    try:
        yield folder
    except OSError as error:
        if is_disk_full(error):
            raise CompkitError(disk_full_message(target)) from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def new_file(folder: str | os.PathLike, stem: str, suffix: str, *, beside: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield ``folder/stem+suffix``, or ``stem-2``, ``stem-3``... : a name no other writer holds.

    The name is claimed by creating the file empty (``O_EXCL``), so two processes in the same second
    never write one file; when the block fails, the claim is removed. A name whose file with one of the
    ``beside`` suffixes exists is skipped too.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        path = folder / f"{stem}{'' if number == 1 else f'-{number}'}{suffix}"
        if any(path.with_suffix(other).exists() for other in beside):
            continue
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, wait: bool = True, what: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block.

    ``wait=False``: if another process holds it, raise an error naming that process and ``what`` the
    lock guards (default: the lock's folder) instead of waiting.
    """
    import fcntl
    import socket

    from compkit.errors import CompkitError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CompkitError(f"{what or path.parent} is in use by {holder}; wait for it to finish, or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_csv(path: str | os.PathLike, frame: Any, **kwargs: Any) -> None:
    """Write a pandas DataFrame to ``path`` atomically (``index=False`` by default)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, **kwargs)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
