"""Tests for compkit.archives: normal extraction of each format, hostile members, corrupt archives."""

from __future__ import annotations

import io
import re
import shutil
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from compkit import archives
from compkit.archives import extract, is_archive
from compkit.errors import CompkitError

FILES = {"train.csv": b"id,label\n1,cat\n", "images/a.png": b"\x89PNG-a", "images/deep/b.png": b"\x89PNG-b"}


def write_zip(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for name, link in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, link)
    return path


def write_tar(
    path: Path, files: dict[str, bytes], links: dict[str, str] | None = None, hardlinks=None
) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for kind, entries in ((tarfile.SYMTYPE, links), (tarfile.LNKTYPE, hardlinks)):
            for name, link in (entries or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, link
                archive.addfile(info)
    return path


def write_7z(path: Path, files: dict[str, bytes]) -> Path:
    import py7zr

    with py7zr.SevenZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(content, name)
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (hidden state excluded) as relative name -> bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("suffix", [".zip", ".7z", ".tar", ".tar.gz", ".tgz"])
def test_extract_writes_every_member_and_returns_their_paths(tmp_path, suffix):
    writer = {".zip": write_zip, ".7z": write_7z}.get(suffix, write_tar)
    archive = writer(tmp_path / f"data{suffix}", FILES)
    target = tmp_path / "data"
    paths = extract(archive, target, progress=False)
    assert tree(target) == FILES
    assert sorted(paths) == sorted(target / name for name in FILES)
    assert leftovers(tmp_path) == sorted(["data", archive.name])  # no staging folder left behind


def test_extract_twice_gives_the_same_tree_and_restores_changed_files(tmp_path):
    archive = write_zip(tmp_path / "data.zip", FILES)
    target = tmp_path / "data"
    first = extract(archive, target, progress=False)
    (target / "train.csv").write_bytes(b"edited")
    second = extract(archive, target, progress=False)
    assert first == second
    assert tree(target) == FILES


def test_a_staging_folder_left_by_a_killed_run_is_removed(tmp_path):
    archive = write_zip(tmp_path / "data.zip", FILES)
    stale = tmp_path / ".data.data.zip.extracting"
    (stale / "half").mkdir(parents=True)
    (stale / "half" / "written.bin").write_bytes(b"x")
    extract(archive, tmp_path / "data", progress=False)
    assert not stale.exists()
    assert tree(tmp_path / "data") == FILES


def test_extract_keeps_files_already_in_the_target(tmp_path):
    archive = write_zip(tmp_path / "data.zip", FILES)
    target = tmp_path / "data"
    (target / "images").mkdir(parents=True)
    (target / "images" / "mine.png").write_bytes(b"mine")
    extract(archive, target, progress=False)
    assert tree(target) == {**FILES, "images/mine.png": b"mine"}


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", "images/../../evil.txt", "/tmp/compkit-absolute-evil.txt", "C:/evil.txt", "..\\evil.txt"],
)
def test_zip_members_escaping_the_target_are_refused(tmp_path, member):
    archive = write_zip(tmp_path / "bad.zip", {"fine.txt": b"ok", member: b"evil"})
    target = tmp_path / "out" / "data"
    with pytest.raises(CompkitError) as caught:
        extract(archive, target, progress=False)
    assert "bad.zip" in str(caught.value) and repr(member) in str(caught.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not Path("/tmp/compkit-absolute-evil.txt").exists()
    assert not target.exists() or tree(target) == {}
    assert leftovers(tmp_path / "out") in ([], ["data"])


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/compkit-absolute-evil.txt"])
def test_tar_members_escaping_the_target_are_refused(tmp_path, member):
    archive = write_tar(tmp_path / "bad.tar", {"fine.txt": b"ok", member: b"evil"})
    with pytest.raises(CompkitError, match="bad.tar"):
        extract(archive, tmp_path / "data", progress=False)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/compkit-absolute-evil.txt").exists()
    assert not (tmp_path / "data").exists() or tree(tmp_path / "data") == {}


@pytest.mark.parametrize(
    "links",
    [
        {"link": "../../etc"},
        {"link": "/etc"},
        {"images/link": "../../outside"},
        # Each link alone resolves inside on paper; through the first, the second leaves the target.
        {"here": ".", "escape": "here/../outside"},
    ],
)
def test_tar_symlinks_pointing_outside_are_refused(tmp_path, links):
    archive = write_tar(tmp_path / "bad.tar.gz", FILES, links=links)
    with pytest.raises(CompkitError, match="bad.tar.gz"):
        extract(archive, tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists() or tree(tmp_path / "data") == {}


def test_tar_hardlink_pointing_outside_is_refused(tmp_path):
    archive = write_tar(tmp_path / "bad.tar", FILES, hardlinks={"copy": "../secret"})
    with pytest.raises(CompkitError, match="'copy'"):
        extract(archive, tmp_path / "data", progress=False)


def test_tar_device_or_pipe_is_refused(tmp_path):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as writer:
        pipe = tarfile.TarInfo("pipe")
        pipe.type = tarfile.FIFOTYPE
        writer.addfile(pipe)
    with pytest.raises(CompkitError, match="'pipe' is a device, pipe or other special file"):
        extract(archive, tmp_path / "data", progress=False)


def test_tar_symlink_pointing_inside_is_kept(tmp_path):
    archive = write_tar(tmp_path / "ok.tar", FILES, links={"latest.csv": "train.csv"})
    paths = extract(archive, tmp_path / "data", progress=False)
    link = tmp_path / "data" / "latest.csv"
    assert link.is_symlink() and link.read_bytes() == FILES["train.csv"]
    assert link in paths


@pytest.mark.parametrize("link", ["../../outside", "/etc/passwd", "sub/../../../outside"])
def test_zip_symlink_entry_pointing_outside_is_refused(tmp_path, link):
    archive = write_zip(tmp_path / "bad.zip", FILES, links={"images/link": link})
    with pytest.raises(CompkitError, match="images/link"):
        extract(archive, tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists() or tree(tmp_path / "data") == {}


def test_zip_symlink_entry_pointing_inside_becomes_a_symlink(tmp_path):
    archive = write_zip(tmp_path / "ok.zip", FILES, links={"images/first.png": "a.png"})
    extract(archive, tmp_path / "data", progress=False)
    link = tmp_path / "data" / "images" / "first.png"
    assert link.is_symlink() and link.read_bytes() == FILES["images/a.png"]


def test_7z_symlink_pointing_outside_is_refused(tmp_path):
    import py7zr

    (tmp_path / "outside.txt").write_bytes(b"secret")
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_bytes(b"a")
    (source / "link").symlink_to("../outside.txt")
    with py7zr.SevenZipFile(tmp_path / "bad.7z", "w") as archive:
        archive.write(source / "a.txt", "a.txt")
        archive.write(source / "link", "link")
    with pytest.raises(CompkitError, match=r"refusing to extract .*bad\.7z.*link"):
        extract(tmp_path / "bad.7z", tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists() or tree(tmp_path / "data") == {}


def corrupt_copies(archive: Path) -> list[tuple[str, bytes]]:
    data = archive.read_bytes()
    middle = len(data) // 2
    flipped = data[:middle] + bytes(255 - byte for byte in data[middle : middle + 16]) + data[middle + 16 :]
    return [("truncated", data[:middle]), ("flipped", flipped)]


@pytest.mark.parametrize("suffix", [".zip", ".7z", ".tar.gz"])
def test_corrupt_archive_raises_naming_it_and_leaves_nothing(tmp_path, suffix):
    writer = {".zip": write_zip, ".7z": write_7z}.get(suffix, write_tar)
    # Incompressible content so that a flipped byte lands inside member data, not only in padding.
    content = {f"part{index}.bin": bytes(range(256)) * 64 + bytes([index]) * 997 for index in range(4)}
    good = writer(tmp_path / f"good{suffix}", content)
    for kind, data in corrupt_copies(good):
        archive = tmp_path / f"{kind}{suffix}"
        archive.write_bytes(data)
        target = tmp_path / f"out-{kind}"
        with pytest.raises(CompkitError) as caught:
            extract(archive, target, progress=False)
        assert archive.name in str(caught.value), kind
        assert not target.exists() or tree(target) == {}, kind
        assert not any(name.endswith(".extracting") for name in leftovers(tmp_path)), kind


def test_unknown_archive_type_is_refused(tmp_path):
    (tmp_path / "data.rar").write_bytes(b"Rar!")
    with pytest.raises(CompkitError, match=r"data\.rar.*\.zip"):
        extract(tmp_path / "data.rar", tmp_path / "data", progress=False)


def test_missing_py7zr_says_how_to_install_it(tmp_path, monkeypatch):
    archive = write_7z(tmp_path / "data.7z", FILES)
    monkeypatch.setitem(sys.modules, "py7zr", None)
    with pytest.raises(CompkitError, match="pip install py7zr"):
        extract(archive, tmp_path / "data", progress=False)


def test_is_archive_knows_the_suffixes():
    assert all(is_archive(name) for name in ["a.zip", "b.7z", "c.tar", "d.tar.gz", "e.TGZ"])
    assert not any(is_archive(name) for name in ["a.csv", "b.png", "c.gz", "zip"])


# ---- archive bombs: a limit on how much an archive may expand to ----

ZEROS = {"zeros.bin": bytes(16 << 20), "note.txt": b"hello"}  # 16 MiB that compress to 3-17 kB
WRITERS = {".zip": write_zip, ".7z": write_7z, ".tar.gz": write_tar}


def data_with_a_file_of_mine(tmp_path):
    """tmp_path/data holding mine.txt, which a refused extraction must leave alone."""
    target = tmp_path / "data"
    target.mkdir()
    (target / "mine.txt").write_bytes(b"mine")
    return target


def assert_refused_cleanly(tmp_path: Path, archive: Path, target: Path, caught) -> str:
    message = str(caught.value)
    assert message.startswith(f"refusing to extract {archive}:")
    assert tree(target) == {"mine.txt": b"mine"}  # the target is as it was
    assert not any(name.endswith(".extracting") for name in leftovers(tmp_path))
    return message


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_bomb_over_a_lowered_limit_is_refused_and_leaves_nothing(tmp_path, monkeypatch, suffix):
    archive = WRITERS[suffix](tmp_path / f"bomb{suffix}", ZEROS)
    target = data_with_a_file_of_mine(tmp_path)
    monkeypatch.setenv("COMPKIT_MAX_EXTRACT", "1M")
    with pytest.raises(CompkitError) as caught:
        extract(archive, target, progress=False)
    message = assert_refused_cleanly(tmp_path, archive, target, caught)
    # A tar is counted member by member as its stream is read, so it stops at the first one over.
    expands = "at least 16.0 MiB" if suffix == ".tar.gz" else "16.0 MiB"
    assert f"it would expand to {expands}, over the limit of 1.0 MiB" in message
    assert "1.0 MiB (set by COMPKIT_MAX_EXTRACT=1M)" in message
    assert "raise COMPKIT_MAX_EXTRACT" in message


def test_default_limit_is_a_ratio_of_the_archive_size_and_can_be_raised(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPKIT_MAX_EXTRACT", raising=False)
    monkeypatch.setattr(archives, "RATIO_FLOOR", 1 << 20)  # so that 16 MiB is a bomb by default
    archive = write_zip(tmp_path / "bomb.zip", ZEROS)  # about 16 kB: a ratio of 1000
    target = data_with_a_file_of_mine(tmp_path)
    with pytest.raises(CompkitError) as caught:
        extract(archive, target, progress=False)
    message = assert_refused_cleanly(tmp_path, archive, target, caught)
    size = archive.stat().st_size
    assert f"over the limit of {100 * size / 1024 / 1024:.1f} MiB (100 x the archive's" in message
    assert "COMPKIT_MAX_EXTRACT=<size> (for example 50G)" in message
    # Each way of raising it lets the archive through.
    monkeypatch.setenv("COMPKIT_MAX_EXTRACT", "off")
    assert tree(Path(extract(archive, tmp_path / "off", progress=False)[0]).parent) == ZEROS
    monkeypatch.setenv("COMPKIT_MAX_EXTRACT", "1M")
    extract(archive, tmp_path / "keyword", progress=False, max_size="17M")  # the argument wins
    assert tree(tmp_path / "keyword") == ZEROS


def test_free_disk_space_bounds_extraction_whatever_the_setting(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: real(path)._replace(total=100 << 30, free=(1 << 30) + (8 << 20))
    )
    archive = write_tar(tmp_path / "big.tar.gz", ZEROS)
    target = data_with_a_file_of_mine(tmp_path)
    with pytest.raises(CompkitError) as caught:
        extract(archive, target, progress=False, max_size="off")
    message = assert_refused_cleanly(tmp_path, archive, target, caught)
    assert "over the limit of 8.0 MiB (1.0 GiB free on the disk of" in message
    assert "less 1.0 GiB kept free). Free some space" in message


# A tar needs no such count: tarfile writes exactly the size each member declares.
@pytest.mark.parametrize("suffix", [".zip", ".7z"])
def test_archive_that_lies_about_its_size_is_stopped_while_it_is_written(tmp_path, monkeypatch, suffix):
    # As if the headers declared nothing: only the count of bytes written can stop it.
    monkeypatch.setattr(archives._Budget, "declare", lambda self, size, at_least=False: None)
    archive = WRITERS[suffix](tmp_path / f"bomb{suffix}", ZEROS)
    target = data_with_a_file_of_mine(tmp_path)
    with pytest.raises(CompkitError) as caught:
        extract(archive, target, progress=False, max_size="1M")
    message = assert_refused_cleanly(tmp_path, archive, target, caught)
    assert "it expands to more than its headers declare (stopped after writing" in message
    assert "over the limit of 1.0 MiB" in message


def test_zip_whose_central_directory_understates_a_size_writes_no_more(tmp_path, monkeypatch):
    archive = write_zip(tmp_path / "liar.zip", {"zeros.bin": bytes(16 << 20)})
    data = bytearray(archive.read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 24 : entry + 28] = (1000).to_bytes(4, "little")  # uncompressed size: 1000 bytes
    archive.write_bytes(bytes(data))
    monkeypatch.setenv("COMPKIT_MAX_EXTRACT", "1M")  # the declared 1000 bytes pass
    written = []
    real_spend = archives._Budget.spend
    monkeypatch.setattr(
        archives._Budget, "spend", lambda self, size: (written.append(size), real_spend(self, size))
    )
    with pytest.raises(CompkitError, match=r"liar\.zip.*corrupt"):  # its checksum fails at the stated end
        extract(archive, tmp_path / "data", progress=False)
    assert sum(written) <= 1000  # zipfile stops reading at the stated size
    assert leftovers(tmp_path) == ["liar.zip"]


@pytest.mark.parametrize("suffix", [".zip", ".7z", ".tar", ".tar.gz"])
def test_archive_within_a_lowered_limit_still_extracts(tmp_path, monkeypatch, suffix):
    writer = {".zip": write_zip, ".7z": write_7z}.get(suffix, write_tar)
    archive = writer(tmp_path / f"data{suffix}", FILES)
    monkeypatch.setenv("COMPKIT_MAX_EXTRACT", f"{sum(map(len, FILES.values()))}")  # exactly what it holds
    extract(archive, tmp_path / "data", progress=False)
    assert tree(tmp_path / "data") == FILES


@pytest.mark.parametrize("setting", ["lots", "0", "-5G", "5 parsecs"])
def test_a_limit_that_is_not_a_size_is_explained(tmp_path, monkeypatch, setting):
    archive = write_zip(tmp_path / "data.zip", FILES)
    monkeypatch.setenv("COMPKIT_MAX_EXTRACT", setting)
    with pytest.raises(CompkitError, match=rf"COMPKIT_MAX_EXTRACT='{re.escape(setting)}' is not a size.*50G"):
        extract(archive, tmp_path / "data", progress=False)
    assert leftovers(tmp_path) == ["data.zip"]


@pytest.mark.parametrize(
    "setting, size",
    [
        ("1024", 1024),
        ("50G", 50 << 30),
        ("1.5t", int(1.5 * (1 << 40))),
        ("500 MiB", 500 << 20),
        ("off", None),
    ],
)
def test_limit_settings_are_read_in_binary_units(setting, size):
    assert archives._parse_limit(setting, "COMPKIT_MAX_EXTRACT") == size
