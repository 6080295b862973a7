"""compkit plugin for Kaggle's Plant Pathology 2020 - FGVC7: apple leaves, four classes, mean column ROC AUC.

Images are 2048x1365 JPEGs, so they are decoded once at the working size into a cache
(``data/plant-pathology/cache``); every later epoch, fold and run reads the cache.
"""

from __future__ import annotations

from pathlib import Path

from compkit import Competition, Config, hookimpl
from compkit.errors import CompkitError

CLASSES = ("healthy", "multiple_diseases", "rust", "scab")


class PlantPathology(Competition):
    name = "plant-pathology"
    title = "Plant Pathology 2020 - FGVC7"
    kaggle = "plant-pathology-2020-fgvc7"
    classes = CLASSES
    metric = "roc_auc"
    id_column = "image_id"
    stratify = "label"  # the argmax class name, added by train_table
    sample_submission = "sample_submission.csv"
    # The 1st-place recipe (SE-ResNeXt-50 at 480x768, Adam 1e-3, 70 epochs, fp16, clip 1, flips,
    # shift-scale-rotate, brightness/contrast, blur, TTA) cut to one GPU: square 512, one cosine cycle.
    defaults = Config(
        model="timm/seresnext50_32x4d",
        pretrained=True,
        loss="dense-ce",
        image_size=512,
        epochs=40,
        batch_size=32,
        lr=1e-3,
        optimizer="adam",
        weight_decay=0.0,
        scheduler="cosine",
        warmup_epochs=1.0,
        clip_grad=1.0,
        amp="bf16",
        tta="flips",
    )

    def download(self, root: Path) -> None:
        from compkit import kaggle

        kaggle.competition_files(self.kaggle, root)

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_plant_pathology.demo import write_demo

        write_demo(root, seed)

    def train_table(self, root: Path):
        """``image_id``, the four one-hot class columns, ``label`` (argmax name) and ``path``."""
        table = _read_csv(Path(root) / "train.csv", [self.id_column, *CLASSES])
        onehot = table[list(CLASSES)].to_numpy()
        bad = (onehot.sum(axis=1) != 1) | ((onehot != 0) & (onehot != 1)).any(axis=1)
        if bad.any():
            row = int(bad.argmax())
            raise CompkitError(
                f"{Path(root) / 'train.csv'}: row {row} (image_id {table[self.id_column][row]!r}) "
                f"is not one-hot over {', '.join(CLASSES)}: {onehot[row].tolist()}"
            )
        table["label"] = [CLASSES[i] for i in onehot.argmax(axis=1)]
        table["path"] = "images/" + table[self.id_column] + ".jpg"
        return table

    def test_table(self, root: Path):
        """``image_id`` and ``path``, in test.csv's order (the sample submission's order)."""
        table = _read_csv(Path(root) / "test.csv", [self.id_column])
        table["path"] = "images/" + table[self.id_column] + ".jpg"
        return table

    def transforms(self, stage: str, config: Config):
        """Train: the 1st place's flips, shift-scale-rotate, brightness/contrast and blur; then normalise."""
        import albumentations as A
        import cv2

        steps = [A.Resize(*config.size)]  # a no-op on cached images
        if stage == "train":
            steps += [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.Affine(
                    translate_percent=(-0.2, 0.2),
                    scale=(0.8, 1.2),
                    rotate=(-20, 20),
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=1.0,
                ),
                A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=1.0),
                A.OneOf(
                    [A.MotionBlur(blur_limit=3), A.MedianBlur(blur_limit=3), A.GaussianBlur(blur_limit=3)],
                    p=0.5,
                ),
            ]
        return A.Compose([*steps, A.Normalize(mean=self.mean, std=self.std)])

    def dataset(self, table, root: Path, stage: str, config: Config):
        """Cached images at ``config.image_size`` with float32 (4,) one-hot targets (none at test)."""
        from compkit.cache import rows_of
        from compkit.datasets import ArrayDataset
        from compkit_plant_pathology.data import cached_images

        full = self.test_table(root) if stage == "test" else self.train_table(root)
        images = cached_images(Path(root), full, stage, config.size)
        rows = rows_of(full[self.id_column], table[self.id_column])
        targets = None if stage == "test" else table[list(CLASSES)].to_numpy("float32", copy=True)
        return ArrayDataset(images, targets, self.transforms(stage, config), rows=rows)

    def submission(self, test_table, predictions):
        """``image_id`` then one probability column per class, as in sample_submission.csv."""
        from compkit import submission

        return submission.probabilities_frame(
            test_table[self.id_column], predictions, (self.id_column, *CLASSES)
        )

    def labels(self) -> list[str] | None:
        return None  # a probability submission: no label column to check


def _read_csv(path: Path, columns: list[str]):
    import pandas as pd

    if not path.is_file():
        raise CompkitError(f"{path} is missing; run: compkit download plant-pathology (or --demo)")
    table = pd.read_csv(path, dtype={"image_id": str})
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise CompkitError(
            f"{path} has no column(s) {', '.join(missing)}; columns: {', '.join(table.columns)}"
        )
    return table


@hookimpl
def register_competitions(register):
    register(PlantPathology())


@hookimpl
def register_losses(register):
    def dense_cross_entropy():
        from compkit_plant_pathology.losses import DenseCrossEntropy

        return DenseCrossEntropy()

    register("dense-ce", dense_cross_entropy)
