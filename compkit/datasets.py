"""Generic torch Datasets for image files: decode with OpenCV, albumentations, dict items."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from compkit.errors import CompkitError

MAX_IMAGE_PIXELS = 150_000_000  # about 12,000 x 12,000: 450 MB decoded as RGB uint8
PIXELS_VARIABLE = "COMPKIT_MAX_IMAGE_PIXELS"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixel_limit() -> int | None:
    """The most pixels an image may declare: ``COMPKIT_MAX_IMAGE_PIXELS`` (0: no limit) or the default."""
    value = os.environ.get(PIXELS_VARIABLE, "").strip().replace("_", "")
    if not value:
        return MAX_IMAGE_PIXELS
    if not value.isdigit():
        raise CompkitError(f"{PIXELS_VARIABLE}={value!r} is not a number of pixels (0 means no limit)")
    return int(value) or None


def check_image(path: Path) -> None:
    """Refuse a missing file, or one whose header declares more pixels than ``pixel_limit()``, before decoding.

    A 1 MB PNG can declare 20,000 x 20,000 pixels and cost gigabytes once decoded (a decompression bomb).
    Only the header is read (a PNG's own, else Pillow). A format Pillow cannot identify is left to the decoder.
    """
    if not os.path.isfile(path):
        raise CompkitError(f"image file {path} is missing: check the data folder, or download it again "
                           "with compkit download NAME --force")
    limit = pixel_limit()
    size = None if limit is None else (_png_size(path) or _pillow_size(path))
    if size is None:
        return
    width, height = size
    if width * height > limit:
        raise CompkitError(f"image {path} declares {width} x {height} = {width * height:,} pixels, more than "
                           f"the limit of {limit:,} (a decompression bomb?); if it is real, raise the limit "
                           f"with {PIXELS_VARIABLE}=<pixels> (0: no limit)")


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, its first 24 bytes; None for any other file.

    A third of Pillow's cost: for a 32 px PNG, Pillow's header read took as long as OpenCV's decode.
    """
    with open(path, "rb") as file:
        header = file.read(24)
    if header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        return None
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def _pillow_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # compkit's limit replaces Pillow's (which warns, then refuses at 2x)
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def check_files(paths: Sequence[Path]) -> None:
    """Refuse a list of image files with some missing, before any work starts, naming the first few."""
    missing = [str(path) for path in paths if not os.path.isfile(path)]
    if missing:
        raise CompkitError(f"{len(missing)} of {len(paths)} image files are missing, e.g. {', '.join(missing[:3])}: "
                           "check the data folder, or download it again with compkit download NAME --force")


JPEG_SUFFIXES = (".jpg", ".jpeg")


def read_image(path: Path, channels: int = 3, min_size: int | None = None) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB or (H, W) grayscale, after ``check_image``.

    ``min_size``: the side the image is resized to next. A JPEG is then decoded by libjpeg at the
    smallest 1/2, 1/4 or 1/8 scale whose sides stay at least that (Pillow's ``draft``), when one
    does: a 2048x1365 photo for 512 px decodes at 1/2 scale, and the resize averages a quarter of
    the pixels (bench/data_pipeline.py: the peer that does this).
    """
    check_image(path)
    if min_size and path.suffix.lower() in JPEG_SUFFIXES:
        reduced = _reduced_jpeg(path, channels, min_size)
        if reduced is not None:
            return reduced
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        image = cv2.imread(str(path), flag)
    except cv2.error as error:  # OpenCV's own size limit (CV_IO_MAX_IMAGE_PIXELS) and decoder failures
        raise CompkitError(f"cannot decode image {path}: {error.err or error}") from None
    if image is None:
        raise CompkitError(f"cannot decode image {path} (damaged, truncated or not an image): replace the "
                           "file, or download the data again with compkit download NAME --force")
    return image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _reduced_jpeg(path: Path, channels: int, min_size: int) -> np.ndarray | None:
    """The JPEG decoded at a reduced scale covering ``min_size``, or None when no reduced scale does."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            full = image.size
            image.draft(mode, (min_size, min_size))
            if image.size == full:
                return None  # no reduced scale covers min_size: OpenCV's full decode beats Pillow's
            return np.asarray(image.convert(mode))
    except (OSError, SyntaxError, ValueError) as error:  # truncated or damaged: Pillow's OSError
        raise CompkitError(f"cannot decode image {path} ({error}; damaged or truncated): replace the file, or "
                           "download the data again with compkit download NAME --force") from None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) float array -> float32 tensor (C, H, W)."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


# albumentations steps whose output is a function of their input alone (at p=1), and of those the ones
# that keep a uint8 image uint8 (so a Normalize after them can still run on a whole batch).
FIXED_STEPS = {"Normalize", "ToFloat", "FromFloat", "ToTensorV2", "Resize", "PadIfNeeded", "CenterCrop",
               "Crop", "LongestMaxSize", "SmallestMaxSize", "ToGray", "NoOp"}
UINT8_STEPS = FIXED_STEPS - {"Normalize", "ToFloat", "FromFloat", "ToTensorV2"}
GROUPS = {"Compose", "Sequential"}  # apply every step in order


def transform_randomness(transform: Any) -> str:
    """Where ``transform``'s random numbers come from: "none" (the same output for the same input),
    "transform" (only the generators albumentations keeps per pipeline, which ``set_random_state``
    seeds), or "any" (anything else: it may draw from Python's, numpy's or torch's global generators).

    An albumentations step is fixed at p=0, or at p=1 when it is one of ``FIXED_STEPS`` with fixed
    parameters; ``Lambda`` and anything not from albumentations count as "any".
    """
    if transform is None:
        return "none"
    name = type(transform).__name__
    if not type(transform).__module__.startswith("albumentations.") or name == "Lambda":
        return "any"
    if transform.p == 0:
        return "none"
    if name in GROUPS and transform.p == 1:
        kinds = {transform_randomness(step) for step in transform.transforms}
        return "any" if "any" in kinds else "transform" if "transform" in kinds else "none"
    fixed = name in FIXED_STEPS and transform.p == 1 and getattr(transform, "position", "center") == "center"
    return "none" if fixed and not isinstance(getattr(transform, "max_size", None), Sequence) else "transform"


def split_normalize(transform: Any) -> tuple[Any, Any] | None:
    """(the steps before a final per-pixel Normalize as a Compose, or None, that Normalize), when
    ``transform`` is a fixed Compose whose earlier steps keep uint8 images uint8; else None."""
    if type(transform).__name__ != "Compose" or transform_randomness(transform) != "none" or not transform.transforms:
        return None
    *steps, last = transform.transforms
    if type(last).__name__ != "Normalize" or last.normalization != "standard" or last.p != 1:
        return None  # per-image statistics are not a per-pixel table
    if any(type(step).__name__ not in UINT8_STEPS and step.p != 0 for step in steps):
        return None
    import albumentations as A

    return (A.Compose(copy.deepcopy(steps)) if steps else None), last


class NormalizeBatch:
    """Collate items whose images are uint8 [H, W] or [H, W, C], then normalise the whole batch to
    float32 [B, C, H, W] exactly as ``normalize`` (an albumentations Normalize) does each image.

    albumentations normalises uint8 through a table of 256 values per channel; this takes that table
    from ``normalize`` itself (applied to the values 0-255) and applies it to the batch in one
    ``cv2.LUT``: about 5 µs per 32x32 RGB image against ~25 µs for a Normalize call per image.
    """

    def __init__(self, normalize: Any) -> None:
        self.normalize = normalize
        self._tables: dict[tuple[int, ...], np.ndarray] = {}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(items)
        batch["image"] = self.apply(batch["image"])
        return batch

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W] or [B, H, W, C] -> float32 [B, C, H, W] (C = 1 for the first)."""
        pixels = images.numpy()
        if pixels.dtype != np.uint8:
            raise CompkitError(f"NormalizeBatch needs uint8 images; got {pixels.dtype}")
        batch, height, width, *channels = pixels.shape
        flat = pixels.reshape(batch * height, width, *channels)  # cv2 sees one tall image
        normalised = cv2.LUT(flat, self._table(tuple(channels))).reshape(pixels.shape)
        tensor = torch.from_numpy(normalised)
        return tensor[:, None] if not channels else tensor.permute(0, 3, 1, 2).contiguous()

    def _table(self, channels: tuple[int, ...]) -> np.ndarray:
        """float32 (1, 256[, C]): what ``normalize`` maps each uint8 value of each channel to."""
        if channels not in self._tables:
            ramp = np.arange(256, dtype=np.uint8).reshape(256, 1, *[1] * len(channels))
            ramp = np.ascontiguousarray(np.broadcast_to(ramp, (256, 1, *channels)))
            table = np.asarray(self.normalize(image=ramp)["image"], dtype=np.float32)
            self._tables[channels] = np.ascontiguousarray(table.reshape(1, 256, *channels))
        return self._tables[channels]


@dataclasses.dataclass(frozen=True)
class _MemmapFile:
    path: str


class ArrayDataset(Dataset):
    """Images already in memory as a uint8 array (N, H, W) or (N, H, W, C), with optional targets.

    Item: ``{"image": float32 [C, H, W], "target": int64 [] or float32 [C]}`` (no target at test).
    """

    uint8_images = False  # True: items keep the image uint8 [H, W(, C)] (see normalized_in_batches)

    def __init__(self, images: Sequence[Any], targets: Sequence[Any] | None, transform: Any,
                 task: Any = "classification", rows: np.ndarray | None = None) -> None:
        self.images = images
        self.targets = targets
        self.transform = transform
        self.task = task  # a task name or a compkit.tasks.Task
        # sample i is images[rows[i]]: a fold reads its rows of a cache made once for the whole table
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images) if self.rows is None else len(self.rows)

    def load(self, index: int) -> np.ndarray:
        """The uint8 image (H, W) or (H, W, C) of sample ``index``."""
        if self.rows is None:
            return self.images[index]
        return np.array(self.images[self.rows[index]])  # a writable copy, not a view of a read-only cache

    def __getstate__(self) -> dict[str, Any]:
        # A memmap pickles as all of its bytes: send a spawned worker the file name instead.
        state = self.__dict__.copy()
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = _MemmapFile(str(self.images.filename))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], _MemmapFile):
            state["images"] = np.load(state["images"].path, mmap_mode="r")
        self.__dict__.update(state)

    def selected_images(self) -> np.ndarray:
        """This dataset's images as one uint8 array (N, H, W[, C]), in sample order."""
        return np.asarray(self.images) if self.rows is None else np.asarray(self.images)[self.rows]

    def randomness(self) -> str:
        """Where an item's random numbers come from: its transform's (see ``transform_randomness``).

        A subclass whose ``load`` draws random numbers must say "any".
        """
        return transform_randomness(self.transform)

    def normalized_in_batches(self) -> tuple[ArrayDataset, NormalizeBatch] | None:
        """(a copy whose items keep the image uint8, the collate function that normalises a batch of
        them as this dataset's items are), for a fixed transform ending in a Normalize and uint8
        images; else None. The batches are the same, bit for bit."""
        split = split_normalize(self.transform)
        if self.targets is not None and self.collate is not None:
            return None  # targets the default collate cannot batch (a detector's boxes) and the split would not move
        if split is None or not len(self) or self.load(0).dtype != np.uint8:
            return None
        dataset = copy.copy(self)
        dataset.transform, dataset.uint8_images = split[0], True
        return dataset, NormalizeBatch(split[1])

    @property
    def collate(self) -> Any:
        """How this dataset's items become a batch (the task's; None: torch's default collate)."""
        from compkit import tasks

        return tasks.get(self.task).collate_fn()

    def __getitem__(self, index: int) -> dict[str, Any]:
        from compkit import tasks

        value = None if self.targets is None else self.targets[index]
        image, target = tasks.get(self.task).transformed(self.transform, self.load(index), value)
        item = {"image": torch.from_numpy(np.array(image)) if self.uint8_images else to_tensor(image)}
        if target is not None:
            item["target"] = target
        return item


class ImageDataset(ArrayDataset):
    """Images decoded from files on each access (``paths`` in place of an array)."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[Any] | None, transform: Any,
                 task: Any = "classification", channels: int = 3, min_size: int | None = None) -> None:
        super().__init__(list(paths), targets, transform, task)
        self.channels, self.min_size = channels, min_size  # min_size: see read_image
        check_files(self.images)

    def load(self, index: int) -> np.ndarray:
        return read_image(self.images[index], self.channels, self.min_size)
