"""Safe extraction of .zip, .7z and .tar(.gz) archives: nothing lands outside the target folder.

Members are extracted into a temporary sibling of the target and moved into place only when the
whole archive was read, so a corrupt archive or a killed run never leaves a half-extracted tree.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from compkit.errors import CompkitError

ZIP_SUFFIXES = (".zip",)
SEVEN_ZIP_SUFFIXES = (".7z",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SUFFIXES = ZIP_SUFFIXES + SEVEN_ZIP_SUFFIXES + TAR_SUFFIXES

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


def is_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a suffix :func:`extract` understands (.zip, .7z, .tar, .tar.gz, .tgz, ...)."""
    return Path(path).name.lower().endswith(SUFFIXES)


def extract(archive: str | os.PathLike, target: str | os.PathLike, *, progress: bool = True) -> list[Path]:
    """Extract ``archive`` into the folder ``target`` and return the paths of the files it wrote.

    Members with absolute paths, drive letters, ``..`` components, or links pointing outside
    ``target`` raise :class:`CompkitError` before anything reaches ``target``. Existing files
    are overwritten, so extracting the same archive twice gives the same tree.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise CompkitError(f"archive {archive} does not exist")
    if target.exists() and not target.is_dir():
        raise CompkitError(f"cannot extract {archive} into {target}: it is a file, not a folder")
    extractor = _extractor(archive)
    staging = _staging_folder(archive, target)
    # A folder left by a killed run is garbage: its archive was never fully extracted.
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        extractor(archive, staging, _show_progress(progress))
        _reject_links_outside(archive, staging)
        target.mkdir(parents=True, exist_ok=True)
        return sorted(_move_tree(staging, target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extractor(archive: Path):
    name = archive.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return _extract_zip
    if name.endswith(SEVEN_ZIP_SUFFIXES):
        return _extract_7z
    if name.endswith(TAR_SUFFIXES):
        return _extract_tar
    raise CompkitError(f"cannot extract {archive}: unknown archive type; supported: {', '.join(SUFFIXES)}")


def _staging_folder(archive: Path, target: Path) -> Path:
    # A sibling (not a child) of the target, on the same file system, so moving members is a rename.
    target = target.absolute()
    return target.parent / f".{target.name}.{archive.name}.extracting"


def _show_progress(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


def _progress_bar(items: Iterable, total: int | None, archive: Path, enabled: bool) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(items, total=total, desc=f"extract {archive.name}", unit="file", disable=not enabled))


def _check_member(archive: Path, name: str, link: str | None = None, hardlink: bool = False) -> None:
    """Raise :class:`CompkitError` if member ``name`` (or the ``link`` it points to) escapes the target."""
    problem = _unsafe_name(name)
    if problem is None and link is not None:
        problem = _unsafe_link(name, link, hardlink)
    if problem is not None:
        raise CompkitError(f"refusing to extract {archive}: member {name!r} {problem}")


def _unsafe_name(name: str) -> str | None:
    # Backslashes are path separators for archives written on Windows.
    normal = name.replace("\\", "/")
    if normal.startswith("/"):
        return "has an absolute path"
    if _DRIVE_LETTER.match(normal):
        return "starts with a drive letter"
    if ".." in normal.split("/"):
        return "contains a '..' component"
    return None


def _unsafe_link(name: str, link: str, hardlink: bool) -> str | None:
    normal = link.replace("\\", "/")
    if normal.startswith("/") or _DRIVE_LETTER.match(normal):
        return f"links to the absolute path {link!r}"
    # A symlink is relative to its own folder, a tar hard link to the archive root.
    base = "" if hardlink else posixpath.dirname(name.replace("\\", "/"))
    resolved = posixpath.normpath(posixpath.join(base, normal))
    if resolved == ".." or resolved.startswith("../"):
        return f"links outside the target folder ({link!r})"
    return None


def _extract_zip(archive: Path, staging: Path, progress: bool) -> None:
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = zip_file.infolist()
            links = {}
            for member in members:
                link = _zip_symlink_target(zip_file, member)
                _check_member(archive, member.filename, link)
                if link is not None:
                    links[member.filename] = link
            for member in _progress_bar(members, len(members), archive, progress):
                if member.filename not in links:
                    zip_file.extract(member, staging)
            # Links are created last so that no file is ever written through one.
            for name, link in links.items():
                _make_symlink(archive, staging, name, link)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise _corrupt(archive, error) from error


def _zip_symlink_target(zip_file: zipfile.ZipFile, member: zipfile.ZipInfo) -> str | None:
    mode = member.external_attr >> 16
    if not stat.S_ISLNK(mode):
        return None
    return zip_file.read(member).decode("utf-8", errors="replace")


def _make_symlink(archive: Path, staging: Path, name: str, link: str) -> None:
    path = staging / name.replace("\\", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Resolving through links created earlier catches chains that a lexical check cannot.
    if not _inside(path.parent / link, staging):
        raise CompkitError(f"refusing to extract {archive}: member {name!r} links outside the target folder")
    path.unlink(missing_ok=True)
    path.symlink_to(link)


def _extract_tar(archive: Path, staging: Path, progress: bool) -> None:
    try:
        with tarfile.open(archive) as tar_file:
            members = _checked_tar_members(archive, tar_file)
            # The "data" filter re-checks every member and link against the real file system.
            tar_file.extractall(
                staging, members=_progress_bar(members, None, archive, progress), filter="data"
            )
    except tarfile.FilterError as error:
        reason = _FILTER_REASONS.get(type(error).__name__, str(error))
        raise CompkitError(
            f"refusing to extract {archive}: member {error.tarinfo.name!r} {reason}"
        ) from error
    except (tarfile.TarError, zlib.error, lzma.LZMAError, EOFError, OSError) as error:
        raise _corrupt(archive, error) from error


# Why tarfile's "data" filter refused a member, in the words the other formats use.
_FILTER_REASONS = {
    "AbsolutePathError": "has an absolute path",
    "OutsideDestinationError": "would land outside the target folder",
    "AbsoluteLinkError": "links to an absolute path",
    "LinkOutsideDestinationError": "links outside the target folder",
    "SpecialFileError": "is a device, pipe or other special file",
}


def _checked_tar_members(archive: Path, tar_file: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # Checked one by one as the stream is read, so a .tar.gz is decompressed only once.
    for member in tar_file:
        link = member.linkname if (member.issym() or member.islnk()) else None
        _check_member(archive, member.name, link, hardlink=member.islnk())
        yield member


def _extract_7z(archive: Path, staging: Path, progress: bool) -> None:
    try:
        import py7zr
        import py7zr.callbacks
    except ImportError as error:
        raise CompkitError(f"extracting {archive} needs py7zr: pip install py7zr") from error
    links: set[str] = set()
    try:
        with py7zr.SevenZipFile(archive, mode="r") as seven_zip:
            members = seven_zip.list()
            links = {member.filename for member in members if member.is_symlink}
            for member in members:
                _check_member(archive, member.filename)
                _check_not_through_link(archive, member.filename, links)
            callback = _seven_zip_progress(py7zr, len(members), archive, progress)
            try:
                seven_zip.extractall(path=staging, callback=callback)
            finally:
                callback.close()
    except py7zr.exceptions.Bad7zFile as error:
        # py7zr checks link targets itself, once it has decompressed them.
        if "out of target" in str(error) or "path is bad" in str(error):
            raise CompkitError(
                f"refusing to extract {archive}: a member ({', '.join(sorted(links)) or 'unknown'}) "
                f"points outside the target folder ({error})"
            ) from error
        raise _corrupt(archive, error) from error
    except (
        py7zr.exceptions.ArchiveError,
        lzma.LZMAError,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        KeyError,
    ) as error:
        raise _corrupt(archive, error) from error


def _check_not_through_link(archive: Path, name: str, links: set[str]) -> None:
    parts = name.replace("\\", "/").split("/")
    for depth in range(1, len(parts)):
        if "/".join(parts[:depth]) in links:
            raise CompkitError(f"refusing to extract {archive}: member {name!r} is written through a link")


def _seven_zip_progress(py7zr, total: int, archive: Path, enabled: bool):
    """A py7zr extraction callback (it must subclass theirs) advancing a tqdm bar per finished member."""
    from tqdm.auto import tqdm

    class Progress(py7zr.callbacks.ExtractCallback):
        def __init__(self):
            self.bar = tqdm(total=total, desc=f"extract {archive.name}", unit="file", disable=not enabled)

        def report_start_preparation(self):
            pass

        def report_start(self, processing_file_path, processing_bytes):
            pass

        def report_update(self, decompressed_bytes):
            pass

        def report_end(self, processing_file_path, wrote_bytes):
            self.bar.update(1)

        def report_postprocess(self):
            pass

        def report_warning(self, message):
            pass

        def close(self):
            self.bar.close()

    return Progress()


def _corrupt(archive: Path, error: BaseException) -> CompkitError:
    if isinstance(error, OSError) and error.errno is not None:
        # A file-system problem (disk full, permissions), not a bad archive.
        return CompkitError(f"cannot extract {archive}: {error}")
    return CompkitError(
        f"cannot extract {archive}: the archive is corrupt or truncated ({type(error).__name__}: {error}); "
        "delete it and download it again"
    )


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _reject_links_outside(archive: Path, staging: Path) -> None:
    # A last check over what was actually written, whatever the format's own rules were.
    for folder, folder_names, file_names in os.walk(staging):
        for name in folder_names + file_names:
            path = Path(folder) / name
            if path.is_symlink() and not _inside(path, staging):
                member = path.relative_to(staging).as_posix()
                raise CompkitError(
                    f"refusing to extract {archive}: member {member!r} links outside the target"
                )


def _move_tree(source: Path, destination: Path) -> Iterator[Path]:
    """Move the contents of ``source`` into ``destination``, merging folders; yield each file moved."""
    for entry in sorted(source.iterdir()):
        place = destination / entry.name
        if entry.is_dir() and not entry.is_symlink():
            # An existing folder is merged into, also when it is the user's link to another disk.
            if place.is_dir():
                yield from _move_tree(entry, place)
                continue
            if place.exists() or place.is_symlink():
                place.unlink()
            shutil.move(entry, place)
            yield from _files_under(place)
            continue
        if place.is_dir() and not place.is_symlink():
            shutil.rmtree(place)
        elif place.is_symlink():
            place.unlink()
        shutil.move(entry, place)
        yield place


def _files_under(folder: Path) -> Iterator[Path]:
    for parent, folder_names, file_names in os.walk(folder):
        links = [name for name in folder_names if (Path(parent) / name).is_symlink()]
        for name in file_names + links:
            yield Path(parent) / name
