"""The raw SIIM layout (what the Kaggle mirror leaves under the data root) and the tables read from it.

<root>/siim/dicom-images-train/<study>/<series>/<ImageId>.dcm
<root>/siim/dicom-images-test/<study>/<series>/<ImageId>.dcm
<root>/siim/train-rle.csv          ImageId, EncodedPixels (relative RLE, -1 = empty)
<root>/sample_submission.csv       ImageId,EncodedPixels: every test image, -1 (derived)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from compkit import _io
from compkit.errors import CompkitError
from compkit_siim.labels import ID_COLUMN, RLE_COLUMN, read_labels, regions_by_image

MIRROR = "seesee/siim-train-test"  # Kaggle dataset with the stage-1 DICOMs and train-rle.csv
TRAIN_IMAGES = Path("siim/dicom-images-train")
TEST_IMAGES = Path("siim/dicom-images-test")
LABELS = Path("siim/train-rle.csv")
SAMPLE = "sample_submission.csv"
EMPTY = "-1"
MAX_MISSING_SHARE = 0.05  # more labelled images than this without a DICOM: an incomplete download
MAX_MISSING_ANYWAY = 10  # ... unless only this few are missing (a small set, or a few known gaps)


def download(root: Path) -> None:
    """Fetch the mirror into ``root``, check its layout, derive the sample submission if there is none."""
    from compkit import kaggle

    kaggle.dataset(MIRROR, root)
    check_layout(root)
    write_sample(root)


def check_layout(root: Path) -> None:
    """Raise CompkitError naming what is missing unless ``root`` holds the raw layout."""
    wanted = [LABELS, TRAIN_IMAGES, TEST_IMAGES]
    missing = [str(part) for part in wanted if not (root / part).exists()]
    if missing:
        found = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
        raise CompkitError(
            f"{root} lacks {', '.join(missing)} (the layout of Kaggle dataset {MIRROR}); "
            f"found: {', '.join(found) or 'nothing'}. Run compkit download siim --force, or --demo"
        )


def find_dicoms(folder: Path) -> dict[str, Path]:
    """ImageId (the file name without .dcm) -> path, for every DICOM file under ``folder``."""
    if not folder.is_dir():
        raise CompkitError(f"image folder {folder} is missing; run compkit download siim (or --demo)")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.dcm")):
        if path.stem in found:
            raise CompkitError(f"image {path.stem} appears twice: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def _note(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"note: {message}", file=sys.stderr)


def train_table(root: Path) -> pd.DataFrame:
    """One row per labelled training image, in the mask file's order: ImageId, path, has_mask (0/1).

    Images with a DICOM file but no row in the mask file (and rows without a file) are left out:
    without both there is nothing to train on. Each is counted in a note; rows without a file are
    refused when more than ``MAX_MISSING_SHARE`` of them (and more than ``MAX_MISSING_ANYWAY``) lack one,
    as after an incomplete download.
    """
    regions = regions_by_image(read_labels(root / LABELS))
    dicoms = find_dicoms(root / TRAIN_IMAGES)
    ids = [image_id for image_id in regions if image_id in dicoms]
    if not ids:
        raise CompkitError(f"no image in {root / LABELS} has a DICOM file under {root / TRAIN_IMAGES}")
    missing = [image_id for image_id in regions if image_id not in dicoms]
    if missing:
        message = (f"{len(missing)} of {len(regions)} images in {root / LABELS} have no DICOM file under "
                   f"{root / TRAIN_IMAGES}, e.g. {', '.join(missing[:3])}")
        if len(missing) > max(MAX_MISSING_SHARE * len(regions), MAX_MISSING_ANYWAY):
            raise CompkitError(f"{message}: more than {MAX_MISSING_SHARE:.0%} missing looks like an incomplete "
                               "download; run compkit download siim --force")
        _note(f"{message}; they are left out")
    unlabelled = len(dicoms) - len(ids)
    if unlabelled:
        _note(f"{unlabelled} DICOM file(s) under {root / TRAIN_IMAGES} have no row in {root / LABELS}; they are "
              "left out")
    return pd.DataFrame(
        {
            ID_COLUMN: ids,
            "path": [dicoms[image_id].relative_to(root).as_posix() for image_id in ids],
            "has_mask": [int(bool(regions[image_id])) for image_id in ids],
        }
    )


def test_table(root: Path) -> pd.DataFrame:
    """One row per test image in the sample submission's order: ImageId, path, height, width.

    The original size travels with the table so a submission can upscale its masks to it.
    """
    from compkit_siim.dicom import dicom_size

    sample = read_sample(root)
    dicoms = find_dicoms(root / TEST_IMAGES)
    missing = [image_id for image_id in sample[ID_COLUMN] if image_id not in dicoms]
    if missing:
        raise CompkitError(
            f"{len(missing)} image(s) of {root / SAMPLE} have no DICOM file under {root / TEST_IMAGES}, "
            f"e.g. {', '.join(missing[:3])}; the sample and the images must come from the same stage"
        )
    paths = [dicoms[image_id] for image_id in sample[ID_COLUMN]]
    sizes = [dicom_size(path) for path in paths]
    return pd.DataFrame(
        {
            ID_COLUMN: sample[ID_COLUMN].tolist(),
            "path": [path.relative_to(root).as_posix() for path in paths],
            "height": [size[0] for size in sizes],
            "width": [size[1] for size in sizes],
        }
    )


def read_sample(root: Path) -> pd.DataFrame:
    """The sample submission with every value as text."""
    path = root / SAMPLE
    if not path.is_file():
        raise CompkitError(f"sample submission {path} is missing; run compkit download siim (or --demo)")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_sample(root: Path, force: bool = False) -> Path:
    """Write ``sample_submission.csv`` (every test image, sorted by ImageId, ``-1``) unless one exists.

    An existing file (e.g. the competition's own stage-1 sample, put there by hand) is kept, so the
    test table follows its order.
    """
    path = root / SAMPLE
    if path.is_file() and not force:
        return path
    ids = sorted(find_dicoms(root / TEST_IMAGES))
    _io.write_csv(path, pd.DataFrame({ID_COLUMN: ids, RLE_COLUMN: EMPTY}))
    return path
