"""Safe extraction of .zip, .7z and .tar(.gz) archives: nothing lands outside the target folder.

Members are extracted into a temporary sibling of the target and moved into place only when the
whole archive was read, so a corrupt archive or a killed run never leaves a half-extracted tree.

An archive may expand to no more than a limit (see :func:`extract`), checked first against the
sizes its headers declare and then against the bytes actually written, so a decompression bomb
is refused before it fills the disk.
"""

from __future__ import annotations

import inspect
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
from dataclasses import dataclass
from pathlib import Path

from compkit.errors import CompkitError

ZIP_SUFFIXES = (".zip",)
SEVEN_ZIP_SUFFIXES = (".7z",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SUFFIXES = ZIP_SUFFIXES + SEVEN_ZIP_SUFFIXES + TAR_SUFFIXES

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")

# Real competition data compresses about 10x (CSV, JSON) or barely at all (PNG, JPEG, DICOM);
# very sparse tables reach 30-50x. Zeros reach 1000x in a zip or tar.gz and 7000x in a 7z.
MAX_RATIO = 100
# Below this an archive may always expand (disk permitting): harmless, and spares tiny archives.
RATIO_FLOOR = 256 << 20
# Left free on the disk: 1 GiB, or 5% of a smaller file system.
DISK_MARGIN = 1 << 30
LIMIT_VARIABLE = "COMPKIT_MAX_EXTRACT"
_CHUNK = 1 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?")


def is_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a suffix :func:`extract` understands (.zip, .7z, .tar, .tar.gz, .tgz, ...)."""
    return Path(path).name.lower().endswith(SUFFIXES)


def extract(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    *,
    progress: bool = True,
    max_size: int | str | None = None,
) -> list[Path]:
    """Extract ``archive`` into the folder ``target`` and return the paths of the files it wrote.

    Members with absolute paths, drive letters, ``..`` components, or links pointing outside
    ``target`` raise :class:`CompkitError` before anything reaches ``target``. Existing files
    are overwritten, so extracting the same archive twice gives the same tree.

    The archive may expand to at most ``MAX_RATIO`` (100) times its own size, or ``RATIO_FLOOR``
    (256 MiB) if that is more, and never to more than the free disk space less ``DISK_MARGIN``.
    ``max_size`` (bytes, or a string such as ``"50G"``; ``"off"`` for no ratio limit) replaces the
    ratio rule, and so does the environment variable ``COMPKIT_MAX_EXTRACT`` when it is not given.
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
        budget = _budget(archive, staging, target, max_size)
        extractor(archive, staging, _show_progress(progress), budget)
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


@dataclass
class _Budget:
    """How much an archive may expand to, why, what to do about it, and how much it has written."""

    archive: Path
    limit: int
    reason: str
    advice: str
    written: int = 0

    def declare(self, size: int, at_least: bool = False) -> None:
        """Refuse if the archive's headers say it expands to ``size`` bytes (or more) over the limit."""
        if size > self.limit:
            raise self.refusal(f"it would expand to {'at least ' if at_least else ''}{_human(size)}")

    def spend(self, size: int) -> None:
        """Count ``size`` bytes about to be written; refuse before writing them if that passes the limit."""
        if self.written + size > self.limit:
            raise self.overflow(self.written)
        self.written += size

    def overflow(self, written: int) -> CompkitError:
        return self.refusal(
            f"it expands to more than its headers declare (stopped after writing {_human(written)})"
        )

    def refusal(self, what: str) -> CompkitError:
        return CompkitError(
            f"refusing to extract {self.archive}: {what}, over the limit of {_human(self.limit)} "
            f"({self.reason}). {self.advice}"
        )


def _budget(archive: Path, staging: Path, target: Path, max_size: int | str | None) -> _Budget:
    """The limit for ``archive``: the ratio rule (or the setting), capped by the free disk space."""
    trust = "If you trust the archive,"
    if max_size is not None:
        ratio_limit = _parse_limit(max_size, "max_size")
        reason, advice = f"set by max_size={max_size!r}", f"{trust} pass a larger max_size."
    elif os.environ.get(LIMIT_VARIABLE, "").strip():
        setting = os.environ[LIMIT_VARIABLE]
        ratio_limit = _parse_limit(setting, LIMIT_VARIABLE)
        reason, advice = f"set by {LIMIT_VARIABLE}={setting}", f"{trust} raise {LIMIT_VARIABLE}."
    else:
        size = archive.stat().st_size
        ratio_limit = max(size * MAX_RATIO, RATIO_FLOOR)
        reason = (
            f"{MAX_RATIO} x the archive's {_human(size)}, at least {_human(RATIO_FLOOR)}; "
            "real data compresses less"
        )
        advice = f"{trust} raise the limit with {LIMIT_VARIABLE}=<size> (for example 50G) or =off."
    # Everything lands in the staging folder first, then moves into the target (another disk if
    # the target is a link to one).
    free, margin, where = min(
        (_free_space(folder, shown) for folder, shown in ((staging, target.parent), (target, target))),
        key=lambda space: space[0] - space[1],
    )
    disk_limit = max(free - margin, 0)
    if ratio_limit is not None and ratio_limit <= disk_limit:
        return _Budget(archive, ratio_limit, reason, advice)
    reason = f"{_human(free)} free on the disk of {where}, less {_human(margin)} kept free"
    return _Budget(archive, disk_limit, reason, "Free some space, or extract it onto another disk.")


def _free_space(folder: Path, shown: Path) -> tuple[int, int, Path]:
    """Free bytes on the disk of ``folder`` (no bound if it does not exist), the margin to keep, ``shown``."""
    if not folder.exists():
        return sys.maxsize, 0, shown
    usage = shutil.disk_usage(folder)
    return usage.free, min(DISK_MARGIN, usage.total // 20), shown


def _parse_limit(value: int | str, source: str) -> int | None:
    """Bytes from ``50G``, ``500M``, ``1.5T``, ``1000000`` (binary units); None for ``off``."""
    if isinstance(value, int) and value > 0:
        return value
    text = str(value).strip().lower()
    if text in ("off", "none", "unlimited"):
        return None
    match = _SIZE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise CompkitError(
            f"{source}={value!r} is not a size: give bytes with an optional K, M, G or T suffix "
            "(for example 50G), or off for no limit but the free disk space"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _human(size: float) -> str:
    unit = "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"


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


def _extract_zip(archive: Path, staging: Path, progress: bool, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = zip_file.infolist()
            budget.declare(sum(member.file_size for member in members))
            links = {}
            for member in members:
                link = _zip_symlink_target(zip_file, member)
                _check_member(archive, member.filename, link)
                if link is not None:
                    links[member.filename] = link
            for member in _progress_bar(members, len(members), archive, progress):
                if member.filename not in links:
                    _write_zip_member(zip_file, member, staging, budget)
            # Links are created last so that no file is ever written through one.
            for name, link in links.items():
                _make_symlink(archive, staging, name, link)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise _corrupt(archive, error) from error


def _write_zip_member(
    zip_file: zipfile.ZipFile, member: zipfile.ZipInfo, staging: Path, budget: _Budget
) -> None:
    # What zip_file.extract() does for a name _check_member accepted, counting the bytes written.
    path = staging.joinpath(*(part for part in member.filename.split("/") if part not in ("", ".")))
    if member.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with zip_file.open(member) as source, open(path, "wb") as sink:
        while chunk := source.read(_CHUNK):
            budget.spend(len(chunk))
            sink.write(chunk)


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


def _extract_tar(archive: Path, staging: Path, progress: bool, budget: _Budget) -> None:
    try:
        with tarfile.open(archive) as tar_file:
            members = _checked_tar_members(archive, tar_file, budget)
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


def _checked_tar_members(
    archive: Path, tar_file: tarfile.TarFile, budget: _Budget
) -> Iterator[tarfile.TarInfo]:
    # Checked one by one as the stream is read, so a .tar.gz is decompressed only once. tarfile
    # writes exactly member.size bytes for a member, so counting sizes before each member counts
    # what is written, and a member that would pass the limit is refused before it is written.
    declared = 0
    for member in tar_file:
        link = member.linkname if (member.issym() or member.islnk()) else None
        _check_member(archive, member.name, link, hardlink=member.islnk())
        if member.isreg():
            declared += member.size
            budget.declare(declared, at_least=True)
        yield member


def _extract_7z(archive: Path, staging: Path, progress: bool, budget: _Budget) -> None:
    try:
        import py7zr
        import py7zr.callbacks
    except ImportError as error:
        raise CompkitError(f"extracting {archive} needs py7zr: pip install py7zr") from error
    links: set[str] = set()
    # py7zr 1.1+ counts what it decompresses against max_extract_size; older versions rely on the
    # declared sizes, which also bound what py7zr writes for each member.
    bounded = "max_extract_size" in inspect.signature(py7zr.SevenZipFile).parameters
    try:
        with py7zr.SevenZipFile(
            archive, mode="r", **({"max_extract_size": budget.limit} if bounded else {})
        ) as seven_zip:
            members = seven_zip.list()
            budget.declare(sum(member.uncompressed or 0 for member in members))
            links = {member.filename for member in members if member.is_symlink}
            for member in members:
                _check_member(archive, member.filename)
                _check_not_through_link(archive, member.filename, links)
            callback = _seven_zip_progress(py7zr, len(members), archive, progress)
            try:
                seven_zip.extractall(path=staging, callback=callback)
            finally:
                callback.close()
    except getattr(py7zr.exceptions, "DecompressionBombError", ()) as error:
        raise budget.overflow(budget.limit) from error
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
