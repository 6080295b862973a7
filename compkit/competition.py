"""The Competition base class: one plain class per competition, settings as class attributes.

A plugin subclasses it, fills in the data methods and registers an instance. Everything else has
a default that fits a plain image-classification competition. Importing this loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compkit.config import Config
from compkit.errors import CompkitError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch.utils.data

    from compkit.tasks import Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Competition:
    """A Kaggle-style competition: where its data comes from, how to read it, score it and submit.

    Tables (``train_table``/``test_table``) have one row per sample with the ``id_column``;
    by default a ``path`` column (relative to the data root) names the image file and, for
    training, a ``target`` column holds the class index.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    kaggle: ClassVar[str | None] = None  # competition slug for download/upload, None if not on Kaggle
    kaggle_dataset: ClassVar[str | None] = None  # "owner/slug" of a Kaggle dataset the data is (nothing to submit to)
    # a task name (classification | multilabel | segmentation | multiclass-segmentation, or a plugin's)
    # or a compkit.tasks.Task instance, e.g. Segmentation(triple_threshold=True)
    task: ClassVar[str | Task] = "classification"
    classes: ClassVar[tuple[str, ...]] = ()
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    id_column: ClassVar[str] = "id"
    stratify: ClassVar[str | tuple[str, ...] | None] = "target"  # a tuple means multi-label columns
    group: ClassVar[str | None] = None  # samples sharing this column's value stay in one fold
    label_column: ClassVar[str] = "label"  # the submission's column for a predicted class name
    sample_submission: ClassVar[str | None] = "sample_submission.csv"  # relative to the data root
    blank_columns: ClassVar[tuple[str, ...]] = ()  # submission columns where "" is a value (no box: PredictionString)
    ignore_index: ClassVar[int] = 255  # multi-class segmentation: the target value of pixels not scored
    data_name: ClassVar[str | None] = None  # a variant reads this competition's data folder (None: its own)
    output_files: ClassVar[bool] = False  # the submission is files (write_files), not a table
    in_channels: ClassVar[int] = 3
    mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, ...]] = IMAGENET_STD
    defaults: ClassVar[Config] = Config()

    # -- data: a plugin implements these ------------------------------------------------------

    def download(self, root: Path) -> None:
        """Fetch the real data into ``root`` in the competition's raw layout."""
        raise CompkitError(f"{self.name}: no download defined; put the data in {root} by hand")

    def make_demo(self, root: Path, seed: int = 0) -> None:
        """Write a small synthetic dataset with a learnable signal in the raw layout."""
        raise CompkitError(f"{self.name}: this competition has no demo data")

    def train_table(self, root: Path) -> pd.DataFrame:
        """One row per training sample."""
        raise NotImplementedError(f"{type(self).__name__}.train_table")

    def test_table(self, root: Path) -> pd.DataFrame:
        """One row per test sample, in the sample submission's order."""
        raise NotImplementedError(f"{type(self).__name__}.test_table")

    # -- defaults a plugin may override -------------------------------------------------------

    @property
    def kind(self) -> Task:
        """The competition's task as an object (``compkit.tasks.Task``), whichever way ``task`` names it."""
        from compkit import tasks

        return tasks.of(self)

    @property
    def num_classes(self) -> int:
        """Output channels of the model (the task decides: one per class, one for binary segmentation)."""
        return self.kind.outputs(self)

    @property
    def activation(self) -> str:
        """How logits become probabilities (the task's)."""
        return self.kind.activation

    def transforms(self, stage: str, config: Config) -> Any:
        """An albumentations pipeline for ``stage`` (train|valid|test): resize, flip, normalise."""
        import albumentations as A
        import cv2

        # area interpolation: linear aliases when a photo shrinks several times over
        steps = [A.Resize(*config.size, interpolation=cv2.INTER_AREA)]
        if stage == "train":
            steps.append(A.HorizontalFlip(p=0.5))
        steps.append(A.Normalize(mean=self.mean, std=self.std))
        return self.kind.compose(steps)  # a detection task's Compose also moves the boxes

    def dataset(self, table: pd.DataFrame, root: Path, stage: str, config: Config) -> torch.utils.data.Dataset:
        """Images from ``table["path"]`` (under ``root``) with ``table["target"]`` class indices."""
        from compkit.datasets import ImageDataset

        targets = None if stage == "test" else table["target"].to_numpy()
        paths = [Path(root) / path for path in table["path"]]
        # the default transforms resize to image_size, so a JPEG may decode at a reduced scale covering it;
        # a plugin's own transforms may crop from a larger size first. read_image keeps both decoded sides at
        # least min_size, so max(H, W) covers an H x W resize whatever the photo's orientation
        min_size = max(config.size) if type(self).transforms is Competition.transforms else None
        return ImageDataset(paths, targets, self.transforms(stage, config), task=self.kind, min_size=min_size)

    def score(self, targets: np.ndarray, predictions: np.ndarray) -> float:
        """The competition's metric from targets and probabilities (see ``compkit.metrics``)."""
        from compkit import metrics

        function = getattr(metrics, self.metric.replace("-", "_"), None)
        if function is None:
            raise CompkitError(f"{self.name}: no metric {self.metric!r} in compkit.metrics; override score()")
        if function in (metrics.miou, metrics.pixel_accuracy):
            return float(function(targets, predictions, ignore_index=self.ignore_index))
        return float(function(targets, predictions))

    def image_scores(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """The score per sample, ``f(targets, probabilities) -> (N,)``, when ``score`` is its mean over
        samples (then the CV is computed a chunk of images at a time); None otherwise. The task decides
        (binary segmentation knows ``compkit.metrics.PER_IMAGE``, Dice; None when ``score`` is overridden)."""
        return self.kind.image_scores(self)

    def submission(self, test_table: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
        """Submission rows: the id and the predicted class name."""
        from compkit import submission

        columns = (self.id_column, self.label_column)
        return submission.labels_frame(test_table[self.id_column], predictions, self.classes, columns)

    def fixed_split(self, table: pd.DataFrame, root: Path) -> np.ndarray | None:
        """A split the competition provides (an official train/val list): one fold per row of ``table``,
        0..K-1 where the row is validated, -1 for a row only ever trained on. None, the default: k-fold
        from ``n_folds`` (stratified on ``stratify``, grouped on ``group``)."""
        return None

    def write_files(self, test_table: pd.DataFrame, predictions: list[np.ndarray], folder: Path) -> list[Path]:
        """With ``output_files``: write the submission files into the empty staging ``folder`` and return
        them. ``predictions[i]`` is test row i's (``Task.decided``: probabilities (C,) or a binary (H, W)
        map; uint8 (H, W) class indices for multi-class segmentation). Check everything before writing
        anything (raise CompkitError); the core moves the folder to ``submissions/NAME/<stamp>/``."""
        raise CompkitError(f"{self.name} sets output_files but does not implement write_files()")

    def test_targets(self, root: Path) -> np.ndarray | None:
        """The targets of ``test_table``'s rows, in its order, when the test set is labelled (then
        ``compkit submit`` scores its predictions); None, the default, when it is not."""
        return None

    def report(self, targets: np.ndarray, probabilities: np.ndarray) -> str | None:
        """Text printed after a fold trains, from its out-of-fold targets and probabilities (e.g. a
        confusion matrix); None, the default, prints nothing."""
        return None

    def labels(self) -> list[str] | None:
        """The values allowed in a label submission's label column (None: not a label submission)."""
        return self.kind.label_names(self)

    # -- helpers ------------------------------------------------------------------------------

    def read_sample(self, root: Path) -> pd.DataFrame | None:
        """The sample submission, or None when the competition has none."""
        import pandas as pd

        if self.sample_submission is None:
            return None
        path = Path(root) / self.sample_submission
        if not path.is_file():
            raise CompkitError(f"{self.name}: sample submission {path} is missing; run compkit download {self.name}")
        return pd.read_csv(path, dtype={self.id_column: str}, keep_default_na=False)

    def recipes(self) -> dict[str, Path]:
        """The recipes the plugin ships, by name: ``<package>/recipes/<competition>-<name>.toml`` (a name
        has no ``-``, so ``siim-classification-demo.toml`` is not a recipe of ``siim``).

        ``compkit train NAME --recipe demo`` finds ``<package>/recipes/NAME-demo.toml`` from any folder.
        """
        from importlib.resources import files

        folder = files(type(self).__module__.split(".")[0]) / "recipes"
        if not folder.is_dir():
            return {}
        prefix = f"{self.name}-"
        return {entry.name[len(prefix):-len(".toml")]: Path(str(entry)) for entry in folder.iterdir()
                if entry.name.startswith(prefix) and entry.name.endswith(".toml")
                and "-" not in entry.name[len(prefix):-len(".toml")]}

    def describe(self) -> str:
        """A one-line summary for listings."""
        return f"{self.name}: {self.title or self.name} ({self.kind.name}, {self.metric})"
