"""compkit plugin for the ISBI 2012 EM segmentation challenge: neuronal membranes in 30 electron-microscope
slices, segmented with a U-Net as in the U-Net tutorial, scored by the Dice of the membrane.

The submission is files, not a CSV: one multi-page float32 TIFF of the test slices (what the challenge
scored) and a PNG mask per slice. Heavy work (OpenCV, torch) lives in submodules imported inside the methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from compkit import Competition, Config, hookimpl

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# The 30 real training slices' grey level over 255: mean and standard deviation (the encoder trains from
# scratch, so the data's own statistics, not ImageNet's).
GREY_MEAN, GREY_STD = (0.4948,), (0.1726,)
FOLDS = 5  # contiguous blocks of slices (see fixed_split)


class Isbi(Competition):
    name = "isbi"
    title = "ISBI 2012 EM segmentation of neuronal membranes (U-Net tutorial)"
    kaggle = None  # the challenge was never on Kaggle, and its site is gone: nothing to upload to
    task = "segmentation"
    # The foreground, the target and the Dice are the membrane (label 0), not the cell (label 255): cells
    # cover about 78 % of every slice, so predicting "all cell" already scores a cell Dice of 0.88 and
    # that Dice barely tells a model from a constant; the membranes are what the challenge is about.
    # Training is the same either way (BCE is symmetric in the two classes).
    classes = ("membrane",)
    metric = "dice"
    id_column = "id"
    stratify = None
    sample_submission = None  # the submission is files (write_files)
    output_files: ClassVar[bool] = True
    in_channels = 1
    mean, std = GREY_MEAN, GREY_STD
    # The source's recipe: a U-Net trained from scratch, BCE on logits, RMSprop lr 1e-5 with momentum 0.9
    # and weight decay 1e-8 on every parameter, batch 1, 40 epochs, random flips, the checkpoint with the
    # lowest training loss, masks cut at 0.5. smp's U-Net on VGG-13-BN is the original's contracting path
    # (two 3x3 convolutions per level, 64 to 512 channels, max pooling) with BatchNorm.
    defaults = Config(
        model="unet/vgg13_bn",
        pretrained=False,
        loss="bce",
        image_size=512,
        epochs=40,
        batch_size=1,
        lr=1e-5,
        optimizer="rmsprop",
        momentum=0.9,
        weight_decay=1e-8,
        decay_1d=True,
        scheduler="none",
        checkpoint="train_loss",
        mask_threshold=0.5,
        drop_last=False,
        tta="none",
        n_folds=FOLDS,
    )

    def download(self, root: Path) -> None:
        """The tutorial's PNGs from GitHub (SHA-256 checked), or the challenge's TIFFs when they are in
        ``root``; then slices.csv."""
        from compkit_isbi import layout

        layout.download(Path(root))

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_isbi import layout
        from compkit_isbi.demo import write_demo

        write_demo(Path(root), seed)
        layout.write_index(Path(root))

    def train_table(self, root: Path) -> pd.DataFrame:
        """``id`` (slice number), ``path``, ``label`` (PNG paths under ``root``), ``height``, ``width``."""
        from compkit_isbi import layout

        return layout.table(Path(root), "train")

    def test_table(self, root: Path) -> pd.DataFrame:
        """``id``, ``path``, ``height``, ``width`` of the test slices, in slice order (the TIFF's pages)."""
        from compkit_isbi import layout

        return layout.table(Path(root), "test")

    def fixed_split(self, table: pd.DataFrame, root: Path) -> np.ndarray:
        """Fold k validates the k-th of ``FOLDS`` contiguous blocks of slices (6 of the 30).

        The slices are consecutive 50 nm sections of one volume, so neighbours look alike: a random split
        would validate each slice beside its neighbour in training and flatter the score.
        """
        import numpy as np

        return np.concatenate([np.full(len(block), k) for k, block in
                               enumerate(np.array_split(np.arange(len(table)), FOLDS))])

    def transforms(self, stage: str, config: Config):
        """Resize to the config's size; for training random horizontal and vertical flips (a section has no
        up or left); the grey normalisation."""
        import albumentations as A
        import cv2

        steps = [A.Resize(*config.size, interpolation=cv2.INTER_AREA)]
        if stage == "train":
            steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
        return A.Compose([*steps, A.Normalize(mean=self.mean, std=self.std)])

    def dataset(self, table: pd.DataFrame, root: Path, stage: str, config: Config):
        from compkit_isbi.dataset import SliceDataset

        return SliceDataset(table, Path(root), self.transforms(stage, config), labelled=stage != "test")

    def write_files(self, test_table: pd.DataFrame, predictions: list[np.ndarray], folder: Path) -> list[Path]:
        """``test-probabilities.tif`` (page i = row i, 1 - the membrane probability: the challenge's 0 is
        membrane) and ``masks/<id>.png`` (255 cell, 0 membrane), after checking every prediction."""
        from compkit_isbi.submit import write_submission

        return write_submission(test_table, predictions, Path(folder))


@hookimpl
def register_competitions(register):
    register(Isbi())
