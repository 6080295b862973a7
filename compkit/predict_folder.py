"""``compkit predict``: a folder of image files predicted with a run's folds and TTA, no test table needed.

Each file is read as the competition's models see images (grayscale or RGB, ``compkit.datasets.read_image``
with its checks) and goes through the competition's own test transforms for the run's config. Transforms
that set the size themselves (a resize, a crop) get the image as it is; transforms that do not (a
competition whose images arrive resized from a cache, as SIIM's do) get it resized to ``image_size`` first,
as the cache does (``compkit.cache.resize``). The folds' probabilities are merged as ``compkit submit``
merges them (``pipeline._predict.predict``, the same Engine calls).

Classification and multi-label write a CSV: ``image``, one probability column per class and, for
classification, ``label`` (the most probable class). Segmentation writes a folder of PNG masks, one per
image with its stem, at the image's own size (probability > 0.5 -> 255).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from compkit import _io, console, places
from compkit.competition import Competition
from compkit.config import Config
from compkit.datasets import ImageDataset, read_image
from compkit.errors import CompkitError
from compkit.places import Places
from compkit.runs import run_config

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PREDICTIONS = Path("predictions")  # predictions/NAME/<run>-<stamp>.csv, beside data/, runs/, submissions/


def predict_folder(name: str, where: Places, *, run: str | None = None, images: Path,
                   labels: Path | None = None, out: Path | None = None, fold_spec: str = "all",
                   tta: str | None = None, device: str | None = None, batch_size: int | None = None) -> Path:
    """Predict every image file in ``images`` with ``run``'s models (default: latest, every trained fold);
    returns the CSV (or the mask folder) written. ``labels`` (image,label): also print accuracy and the
    confusion matrix. Everything that can be checked (the folder, the labels, the output) is checked first."""
    from compkit.pipeline import _common, _predict

    comp = _common.competition(name)
    runs_root = where.runs / name
    run = places.resolve_run(runs_root, run)
    run_dir = runs_root / run
    config = run_config(run_dir, comp)
    table = image_table(images)
    folds, full = _common.choose_models(run_dir, fold_spec)
    models = [f"fold{k}" for k in folds] + (["full"] if full else [])
    truth = read_labels(labels, table, comp) if labels is not None else None
    segmentation = comp.kind.dense  # a map per image: written as PNGs
    if segmentation:
        _check_stems(table, images)
    check_out(out, segmentation)
    dataset = folder_dataset(comp, config, table)
    view_mode = tta or config.tta
    probabilities = _predict.predict(
        FolderImages(comp, dataset), config, images, run_dir, models, table, view_mode, device, batch_size
    )
    if segmentation:
        written = write_masks(out, name, run, table, probabilities, comp.kind)
    else:
        frame = comp.kind.prediction_frame(comp, table, probabilities)  # a task's own rows (detection: boxes)
        written = write_csv(out, name, run, probability_frame(comp, table, probabilities) if frame is None else frame)
    if truth is not None:
        for line in report_lines(evaluate(comp, truth, table, probabilities)):
            console.echo(line)
    return written


# -- the images -----------------------------------------------------------------------------------------


def image_table(folder: Path) -> Any:
    """``image`` (file name) and ``path`` of every image file directly in ``folder``, sorted by name."""
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise CompkitError(f"--images {folder}: no such folder")
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    found = [path for path in files if path.suffix.lower() in EXTENSIONS]
    if not found:
        others = sorted({path.suffix.lower() or path.name for path in files})
        seen = (
            f"; it holds {len(files)} other file(s) ({', '.join(others[:5])}): convert them to PNG"
            if files
            else ""
        )
        raise CompkitError(f"--images {folder}: no image files ({', '.join(EXTENSIONS)}) in it{seen}")
    return pd.DataFrame({"image": [path.name for path in found], "path": [str(path) for path in found]})


def _check_stems(table: Any, folder: Path) -> None:
    """Masks are named by stem: two images with one stem (a.png, a.jpg) would write one mask."""
    stems = table["image"].map(lambda image: Path(image).stem)
    twice = stems[stems.duplicated(keep=False)]
    if len(twice):
        names = table["image"][twice.index[:2]].tolist()
        raise CompkitError(
            f"--images {folder}: {' and '.join(names)} would write the same mask "
            f"{twice.iloc[0]}.png; rename one"
        )


class FolderDataset(ImageDataset):
    """Image files decoded as the competition's models see them (grayscale or RGB), resized to ``resize_to``
    (a square's side, or (H, W)) first unless that is None (the transforms size them)."""

    def __init__(
        self, paths: list[Path], transform: Any, *, task: Any, channels: int, resize_to: int | tuple[int, int] | None
    ) -> None:
        super().__init__(paths, None, transform, task=task, channels=channels)
        self.resize_to = resize_to

    def load(self, index: int) -> np.ndarray:
        from compkit.cache import resize

        image = read_image(self.images[index], self.channels)
        return image if self.resize_to is None else resize(image, self.resize_to)


def folder_dataset(comp: Competition, config: Config, table: Any) -> Any:
    """A dataset over ``table["path"]`` that yields what ``comp``'s test dataset yields: items
    ``{"image": float32 [C, H, W]}`` after the competition's test transforms for ``config``."""
    if comp.in_channels not in (1, 3):
        raise CompkitError(
            f"{comp.name}'s models take {comp.in_channels}-channel inputs; compkit predict reads "
            "image files as grayscale (1) or RGB (3): predict through its test table with "
            "compkit submit"
        )
    transform = comp.transforms("test", config)
    resize_to = None if _sets_size(comp, transform, config) else config.image_size  # a side, or (H, W)
    return FolderDataset(
        [Path(path) for path in table["path"]],
        transform,
        task=comp.kind,
        channels=comp.in_channels,
        resize_to=resize_to,
    )


def _sets_size(comp: Competition, transform: Any, config: Config) -> bool:
    """Whether the test transforms give every image its size themselves: they change a probe image's."""
    height, width = config.size
    shape = (height + 11, width + 23) + (() if comp.in_channels == 1 else (3,))
    if transform is None:
        return False
    try:
        output = np.asarray(transform(image=np.zeros(shape, dtype=np.uint8))["image"])
    except Exception as error:  # a transform that needs more than an image (masks, metadata)
        raise CompkitError(
            f"{comp.name}'s test transforms fail on a plain {shape[1]}x{shape[0]} image "
            f"({type(error).__name__}: {str(error)[:200]}): compkit predict cannot feed it a folder "
            f"of images; predict through its test table with compkit submit"
        ) from None
    return output.shape[:2] != shape[:2]


class FolderImages:
    """``comp`` whose test set is a folder's images: the dataset ``_predict.predict`` makes its loader of."""

    def __init__(self, comp: Competition, dataset: Any) -> None:
        self._comp, self._dataset = comp, dataset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._comp, name)

    def dataset(self, table: Any, root: Path, stage: str, config: Config) -> Any:
        return self._dataset


# -- the labels -------------------------------------------------------------------------------------------


def class_names(comp: Competition, count: int) -> list[str]:
    """One name per output: the competition's classes, else class0, class1, ..."""
    names = [str(name) for name in comp.classes]
    return names if len(names) == count else [f"class{i}" for i in range(count)]


def read_labels(path: Path, table: Any, comp: Competition) -> Any:
    """``image`` and ``target`` (class index) from a CSV with columns image,label; every image must be in the
    folder and every label a class name. Errors name the file and the line."""
    import pandas as pd

    if not comp.kind.one_label:
        raise comp.kind.refuse(comp, "--labels (accuracy and a confusion matrix)", "single-label classification")
    path = Path(path)
    if not path.is_file():
        raise CompkitError(f"--labels {path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise CompkitError(f"--labels {path}: not a readable CSV ({str(error).strip()[:200]})") from None
    missing = [column for column in ("image", "label") if column not in frame.columns]
    if missing:
        raise CompkitError(
            f"--labels {path}: no column(s) {', '.join(missing)}; expected image,label (found: "
            f"{', '.join(frame.columns) or 'none'})"
        )
    if frame.empty:
        raise CompkitError(f"--labels {path}: no rows")
    names = class_names(comp, comp.num_classes)
    index = {name: i for i, name in enumerate(names)}
    images = set(table["image"])
    seen: dict[str, int] = {}
    for row, (image, label) in enumerate(zip(frame["image"], frame["label"])):
        line = row + 2  # the header is line 1
        if image not in images:
            raise CompkitError(f"--labels {path}, line {line}: image {image!r} is not in the --images folder")
        if label not in index:
            raise CompkitError(
                f"--labels {path}, line {line}: label {label!r} is not a class of {comp.name} "
                f"({', '.join(names)})"
            )
        if image in seen:
            raise CompkitError(
                f"--labels {path}, line {line}: image {image!r} is labelled twice (also line {seen[image]})"
            )
        seen[image] = line
    return pd.DataFrame({"image": frame["image"], "target": frame["label"].map(index).astype("int64")})


def evaluate(comp: Competition, truth: Any, table: Any, probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy on the labelled images and the confusion matrix (rows: true class, columns: predicted)."""
    from sklearn.metrics import confusion_matrix

    names = class_names(comp, probabilities.shape[1])
    row_of = {image: row for row, image in enumerate(table["image"])}
    predicted = probabilities[truth["image"].map(row_of).to_numpy()].argmax(axis=1)
    targets = truth["target"].to_numpy()
    return {
        "accuracy": float((predicted == targets).mean()),
        "labelled": len(truth),
        "images": len(table),
        "classes": names,
        "confusion": confusion_matrix(targets, predicted, labels=list(range(len(names)))),
    }


def report_lines(result: dict[str, Any]) -> list[str]:
    """The accuracy line and the confusion matrix as an aligned table."""
    names, matrix = result["classes"], result["confusion"]
    width = max(max(map(len, names)), len(str(matrix.max())))
    side = max(map(len, names))
    lines = [
        f"accuracy {result['accuracy']:.5f} on {result['labelled']} labelled of {result['images']} images",
        "confusion matrix (rows: true label, columns: predicted label):",
        " " * side + "  " + " ".join(name.rjust(width) for name in names),
    ]
    lines += [
        name.rjust(side) + "  " + " ".join(str(count).rjust(width) for count in row)
        for name, row in zip(names, matrix)
    ]
    return lines


# -- the outputs ------------------------------------------------------------------------------------------


def check_out(out: Path | None, segmentation: bool) -> None:
    """Refuse an ``--out`` the result cannot go to, before anything is predicted."""
    if out is None:
        return
    if segmentation and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompkitError(f"--out {out} exists and is not an empty folder: the masks go to a new folder")
    if not segmentation and out.is_dir():
        raise CompkitError(
            f"--out {out} is a folder: give the CSV file to write, e.g. {out / 'predictions.csv'}"
        )


def probability_frame(comp: Competition, table: Any, probabilities: np.ndarray) -> Any:
    """``image``, one probability column per class (``p_NAME`` where a class is called image or label) and,
    for classification, ``label``: the most probable class."""
    import pandas as pd

    names = class_names(comp, probabilities.shape[1])
    columns = [f"p_{name}" for name in names] if {"image", "label"} & set(names) else names
    frame = pd.DataFrame(probabilities.astype(np.float32), columns=columns)
    frame.insert(0, "image", table["image"].to_numpy())
    if comp.kind.one_label:
        frame["label"] = [names[i] for i in probabilities.argmax(axis=1)]
    return frame


def write_csv(out: Path | None, name: str, run: str, frame: Any) -> Path:
    """``frame`` to ``out``, or to a new predictions/NAME/<run>-<stamp>.csv; atomically either way."""
    if out is not None:
        _io.write_csv(out, frame)
        return out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with _io.new_file(
        PREDICTIONS / name, f"{run}-{stamp}", ".csv"
    ) as path:  # claimed: no two writers share it
        _io.write_csv(path, frame)
    return path


def write_masks(out: Path | None, name: str, run: str, table: Any, probabilities: Any, task: Any) -> Path:
    """A PNG per image, named by its stem, at its own size, as the task draws it (``Task.png``: binary
    segmentation 255 where the probability is above 0.5, multi-class the class index of each pixel).

    Written into a staging folder beside the target, which then moves into place: never half the masks."""
    import cv2
    from PIL import Image

    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = PREDICTIONS / name / f"{run}-{stamp}"
        for number in range(2, 1000):
            if not out.exists():
                break
            out = PREDICTIONS / name / f"{run}-{stamp}-{number}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with _io.staging(out, "masks") as staging:
        for image, path, probability in zip(table["image"], table["path"], probabilities):
            with Image.open(path) as opened:
                width, height = opened.size
            mask = task.png(task.decided(probability), (height, width))
            if not cv2.imwrite(str(staging / f"{Path(image).stem}.png"), mask):
                raise CompkitError(f"could not write the mask of {image} into {staging}")
        if out.is_dir():
            out.rmdir()  # an empty --out folder (check_out refused any other)
        staging.rename(out)
    return out
