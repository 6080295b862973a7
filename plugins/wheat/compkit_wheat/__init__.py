"""compkit plugin for Kaggle's Global Wheat Detection: wheat heads as boxes, one class, the competition's
mAP over IoU 0.5..0.75 (metric ``wheat``).

Folds are grouped on the image's source (the domain it was photographed in): the competition's test images
come from other domains, so a fold validates on a domain its model has not seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compkit import Competition, Config, hookimpl

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

PREDICTION_COLUMN = "PredictionString"


class Wheat(Competition):
    name = "wheat"
    title = "Global Wheat Detection"
    kaggle = "global-wheat-detection"
    task = "detection"
    classes = ("wheat",)
    metric = "wheat"
    id_column = "image_id"
    stratify = None
    group = "source"  # the test set is from other domains: validate on domains the fold did not train on
    sample_submission = "sample_submission.csv"
    blank_columns = (PREDICTION_COLUMN,)  # an image with no head has an empty PredictionString
    # The best logged run of a public Faster R-CNN baseline (junliang230/global_wheat_detection, log/log.md: 0.6704;
    # its train.py follows pestipeti's "pytorch-starter-fasterrcnn-train" kernel): Faster R-CNN R50-FPN at 1024x1024,
    # SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 8, StepLR(5, 0.5), 30 epochs. It fine-tuned COCO weights;
    # compkit's pretrained detectors get ImageNet backbone weights only. Here torchvision's v2 of that model, flips
    # and quarter turns for training and flip TTA merged by WBF, as most of the competition's kernels did.
    defaults = Config(
        model="tv-det/fasterrcnn_resnet50_fpn_v2",
        pretrained=True,
        loss="detector",
        image_size=1024,
        epochs=30,
        batch_size=8,
        lr=0.01,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        scheduler="step",
        step_size=5,
        gamma=0.5,
        warmup_epochs=0.0,
        amp="bf16",
        tta="flips",
    )

    def download(self, root: Path) -> None:
        from compkit import kaggle

        kaggle.competition_files(self.kaggle, root)

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_wheat.demo import write_demo

        write_demo(Path(root), seed)

    def train_table(self, root: Path) -> pd.DataFrame:
        """One row per train/ image: ``image_id``, ``path``, ``width``, ``height``, ``source`` and ``target``
        (float32 [K, 5]: label, x1, y1, x2, y2 in pixels of the file; K = 0 for an image without heads)."""
        from compkit_wheat import layout

        return layout.train_table(Path(root))

    def test_table(self, root: Path) -> pd.DataFrame:
        """``image_id``, ``path``, ``width``, ``height``, in sample_submission.csv's order."""
        from compkit_wheat import layout

        return layout.test_table(Path(root))

    def transforms(self, stage: str, config: Config):
        """Train: resize, horizontal and vertical flips and quarter turns (each p = 0.5); valid / test: resize.
        Then ImageNet normalisation. The boxes move with the image (the detection task's Compose)."""
        import albumentations as A
        import cv2

        height, width = config.size
        steps = [A.Resize(height, width, interpolation=cv2.INTER_AREA)]
        if stage == "train":
            steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
            if height == width:  # a quarter turn of a non-square input would swap its sides within a batch
                steps.append(A.RandomRotate90(p=0.5))
        return self.kind.compose([*steps, A.Normalize(mean=self.mean, std=self.std)])

    def submission(self, test_table: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
        """``image_id,PredictionString`` ("score x y w h ..." in pixels of each test image) from the boxes
        (per image float32 [K, 6]: score, label, x1, y1, x2, y2 normalised to [0, 1])."""
        from compkit import boxes

        return boxes.prediction_strings(test_table[self.id_column], predictions, test_table["width"].to_numpy(),
                                        test_table["height"].to_numpy(), (self.id_column, PREDICTION_COLUMN))


@hookimpl
def register_competitions(register):
    register(Wheat())
