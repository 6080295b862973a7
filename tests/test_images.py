"""Image files that are missing, damaged or decompression bombs give one clear error naming the file."""

from __future__ import annotations

import struct
import zlib

import click
import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from compkit import cache, cli
from compkit.datasets import PIXELS_VARIABLE, ImageDataset, read_image
from compkit.errors import CompkitError, user_message


def png_declaring(path, width: int, height: int) -> None:
    """A valid PNG header declaring ``width`` x ``height`` (grayscale) with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_declared_20000_square_png_is_refused_by_default_before_decoding(tmp_path, monkeypatch):
    monkeypatch.delenv(PIXELS_VARIABLE, raising=False)
    bomb = tmp_path / "bomb.png"
    png_declaring(bomb, 20_000, 20_000)
    assert bomb.stat().st_size < 200
    with pytest.raises(CompkitError, match=r"bomb\.png declares 20000 x 20000 = 400,000,000 pixels.*"
                                           rf"150,000,000.*{PIXELS_VARIABLE}"):
        read_image(bomb)


def test_the_pixel_limit_can_be_lowered_and_raised(tmp_path, monkeypatch):
    image = tmp_path / "big.png"
    cv2.imwrite(str(image), np.zeros((300, 400, 3), np.uint8))
    monkeypatch.setenv(PIXELS_VARIABLE, "100_000")
    with pytest.raises(CompkitError, match=r"400 x 300 = 120,000 pixels, more than the limit of 100,000"):
        read_image(image)
    monkeypatch.setenv(PIXELS_VARIABLE, "120000")
    assert read_image(image).shape == (300, 400, 3)
    monkeypatch.setenv(PIXELS_VARIABLE, "0")  # no limit
    assert read_image(image, channels=1).shape == (300, 400)
    monkeypatch.setenv(PIXELS_VARIABLE, "lots")
    with pytest.raises(CompkitError, match="'lots' is not a number of pixels"):
        read_image(image)


def test_missing_and_damaged_files_are_named(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(CompkitError, match=r"image file .*gone\.png is missing"):
        read_image(tmp_path / "gone.png")
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"not an image at all")
    with pytest.raises(CompkitError, match=r"cannot decode image .*damaged\.png \(damaged, truncated"):
        read_image(damaged)
    # a dataset, and a cache, check every file before the first epoch or the first decode
    paths = [good, tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(CompkitError, match=r"2 of 3 image files are missing, e\.g\. .*a\.png, .*b\.png"):
        ImageDataset(paths, [0, 1, 2], None)
    with pytest.raises(CompkitError, match=r"2 of 3 image files are missing"):
        cache.resized_images(paths, 4, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


class _Refusing(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise CompkitError(f"cannot decode image sample-{index}.png (damaged)")


def test_an_error_raised_in_a_loader_worker_reaches_the_user_without_the_worker_traceback():
    with pytest.raises(CompkitError) as raised:
        next(iter(DataLoader(_Refusing(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)  # torch's wrapping, which the CLI cuts off
    assert user_message(raised.value) == "cannot decode image sample-0.png (damaged)"

    @cli.cli.command("refuse-in-worker")
    def refuse() -> None:
        next(iter(DataLoader(_Refusing(), num_workers=1)))

    try:
        with pytest.raises(click.ClickException) as clean:
            cli.cli.main(["refuse-in-worker"], standalone_mode=False)
    finally:
        cli.cli.commands.pop("refuse-in-worker")
    assert clean.value.message == "cannot decode image sample-0.png (damaged)"


def test_a_jpeg_decodes_at_the_smallest_reduced_scale_that_covers_the_size(tmp_path):
    import cv2
    import numpy as np

    from compkit.datasets import read_image

    path = tmp_path / "photo.jpg"
    gradient = np.linspace(0, 255, 1200, dtype=np.float32)
    cv2.imwrite(str(path), np.stack([np.tile(gradient, (800, 1))] * 3, axis=-1).astype(np.uint8))
    assert read_image(path).shape == (800, 1200, 3)
    assert read_image(path, min_size=190).shape == (200, 300, 3)  # 1/4: both sides still >= 190
    assert read_image(path, min_size=390).shape == (400, 600, 3)  # 1/2
    assert read_image(path, min_size=500).shape == (800, 1200, 3)  # no reduced scale covers 500 x 500
    assert read_image(path, channels=1, min_size=190).shape == (200, 300)
    reduced = read_image(path, min_size=390).astype(np.float32)
    full = cv2.resize(read_image(path), (600, 400), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(reduced - full).mean() < 3  # the same picture
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CompkitError, match=r"cannot decode image .*photo\.jpg"):
        read_image(path, min_size=190)
