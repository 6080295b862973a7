"""compkit plugin for the COVID-19 Radiography Database, a Kaggle dataset (not a competition): chest X-rays in
one folder per class, accuracy.

There is no test set or submission format, so the plugin holds out a stratified 15 % of each class, drawn
once and kept in ``split.csv``: that is the test table (with its labels, so ``compkit submit`` reports the
test accuracy), the rest is the training table that the folds split.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compkit import Competition, Config, hookimpl

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

DATASET = "tawsifurrahman/covid19-radiography-database"
# Every class a known version has, in the current version's (sorted) folder order. The model always has
# these four outputs, so a run, its checkpoints and its predictions mean the same whichever version is
# on disk; the seed's version has no Lung_Opacity folder, and that output is then never a target.
CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


class CovidCxr(Competition):
    name = "covid-cxr"
    title = "COVID-19 Radiography Database (Kaggle dataset): COVID / lung opacity / normal / viral pneumonia"
    kaggle = None  # a dataset, so nothing to upload to
    kaggle_dataset = DATASET
    classes = CLASSES
    metric = "accuracy"
    id_column = "id"
    label_column = "label"
    stratify = "target"
    sample_submission = None  # no competition, no sample: the submission follows the held-out split
    # The source (a Paddle tutorial) trains an ImageNet ResNet-50 with softmax cross entropy and reports
    # about 0.955 test accuracy; its optimiser settings are not in the facts, so these are a usual
    # fine-tune of that model: AdamW 3e-4 with a one-epoch warmup into cosine, 10 epochs, batch 32, 224 px.
    defaults = Config(
        model="timm/resnet50",
        pretrained=True,
        loss="ce",
        image_size=224,
        epochs=10,
        batch_size=32,
        lr=3e-4,
        optimizer="adamw",
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_epochs=1.0,
        tta="none",
    )

    def download(self, root: Path) -> None:
        """The Kaggle dataset through the official client (unpacked into ``root``), then split.csv."""
        from compkit import kaggle
        from compkit_covid_cxr.layout import ensure_split

        kaggle.dataset(DATASET, root)
        ensure_split(Path(root))

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_covid_cxr.demo import write_demo
        from compkit_covid_cxr.layout import ensure_split

        write_demo(Path(root), seed)
        ensure_split(Path(root))

    def train_table(self, root: Path) -> pd.DataFrame:
        """``id`` (<class>/<stem>), ``label``, ``target``, ``path`` of the images outside the held-out split."""
        return self._split(root, "train")

    def test_table(self, root: Path) -> pd.DataFrame:
        """The held-out split (15 % of each class), with the same columns as the training table."""
        return self._split(root, "test")

    def test_targets(self, root: Path) -> np.ndarray:
        """The held-out split's class indices: the test set is labelled."""
        return self.test_table(root)["target"].to_numpy()

    def transforms(self, stage: str, config: Config):
        """Resize; for training a small shift / scale / rotation and brightness-contrast jitter, no flip
        (a mirrored chest puts the heart on the wrong side); ImageNet normalisation."""
        import albumentations as A
        import cv2

        steps = [A.Resize(*config.size, interpolation=cv2.INTER_AREA)]
        if stage == "train":
            steps += [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.7),
                      A.RandomBrightnessContrast(0.1, 0.1, p=0.5)]
        return A.Compose([*steps, A.Normalize(mean=self.mean, std=self.std)])

    def report(self, targets: np.ndarray, probabilities: np.ndarray) -> str:
        """Accuracy and the per-class confusion matrix of a fold's out-of-fold predictions."""
        from compkit.metrics import accuracy, confusion_table

        return (f"out-of-fold accuracy {accuracy(targets, probabilities):.5f} on {len(targets)} images\n"
                + confusion_table(targets, probabilities, self.classes))

    def _split(self, root: Path, part: str) -> pd.DataFrame:
        from compkit_covid_cxr.layout import split_table

        table = split_table(Path(root))
        return table[table["split"] == part].drop(columns="split").reset_index(drop=True)


@hookimpl
def register_competitions(register):
    register(CovidCxr())
