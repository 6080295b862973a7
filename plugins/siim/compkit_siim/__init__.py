"""compkit plugin for SIIM-ACR pneumothorax: segmentation (``siim``, mean Dice) and the seed's yes/no view
(``siim-classification``, ROC AUC), both read from the chest X-ray DICOMs and the organisers' relative-RLE masks.

Heavy work (pydicom, OpenCV, torch) lives in submodules imported inside the methods.
"""

from __future__ import annotations

from pathlib import Path

from compkit import Competition, Config, hookimpl
from compkit.tasks import Segmentation

# ImageNet's mean and std averaged over RGB: a one-channel encoder (smp, timm) sums the RGB filters of
# its pretrained first convolution, so it expects roughly that scale.
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)


class Siim(Competition):
    name = "siim"
    title = "SIIM-ACR Pneumothorax Segmentation"
    kaggle = "siim-acr-pneumothorax-segmentation"
    # the 1st place's rule searched too: empty unless enough pixels pass a high threshold
    task = Segmentation(triple_threshold=True)
    classes = ("pneumothorax",)
    metric = "dice"
    id_column = "ImageId"
    stratify = "has_mask"
    sample_submission = "sample_submission.csv"
    in_channels = 1
    mean, std = GRAY_MEAN, GRAY_STD
    targets = "mask"  # what a dataset item carries as its target: the merged mask, or "has_mask"
    # One GPU, after the 1st place (U-Net on ResNet-34, BCE+Dice, 512 px stage, hflip TTA); see README.
    defaults = Config(
        model="unet/resnet34",
        pretrained=True,
        loss="bce-dice",
        image_size=512,
        epochs=25,
        batch_size=16,
        lr=3e-4,
        optimizer="adamw",
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_epochs=1.0,
        amp="bf16",
        tta="hflip",
        n_folds=5,
    )

    def download(self, root: Path) -> None:
        from compkit_siim import layout

        layout.download(Path(root))

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_siim.demo import write_demo

        write_demo(Path(root), seed)

    def train_table(self, root: Path):
        from compkit_siim import layout

        return layout.train_table(Path(root))

    def test_table(self, root: Path):
        from compkit_siim import layout

        return layout.test_table(Path(root))

    def transforms(self, stage: str, config: Config):
        """Images arrive at ``image_size`` from the cache; training adds flips, small affine moves, contrast."""
        import albumentations as A
        import cv2

        steps = []
        if stage == "train":
            steps += [
                A.HorizontalFlip(p=0.5),
                A.Affine(
                    translate_percent=(-0.06, 0.06),
                    scale=(0.9, 1.1),
                    rotate=(-10, 10),
                    border_mode=cv2.BORDER_CONSTANT,
                    p=0.5,
                ),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            ]
        steps.append(A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0))
        return A.Compose(steps)

    def dataset(self, table, root: Path, stage: str, config: Config):
        from compkit_siim.dataset import build

        targets = None if stage == "test" else self.targets
        return build(
            table, Path(root), stage, config.size, self.transforms(stage, config), targets=targets
        )

    def submission(self, test_table, predictions):
        from compkit_siim.submit import mask_frame

        return mask_frame(test_table, predictions)


class SiimClassification(Siim):
    """The same images and masks seen as pneumothorax yes/no, as in the seed project (ResNet-18 at 512 px)."""

    name = "siim-classification"
    title = "SIIM-ACR pneumothorax yes/no (classification view, ROC AUC)"
    kaggle = None  # Kaggle never scored this view: nowhere to upload
    task = "classification"
    classes = ("no", "yes")
    metric = "roc_auc"
    targets = "has_mask"
    # the seed's classifier: ResNet-18 at 512 px; the rest as for segmentation
    defaults = Siim.defaults.replace(model="timm/resnet18", loss="ce", epochs=10, batch_size=32)

    def train_table(self, root: Path):
        table = super().train_table(root)
        table["target"] = table["has_mask"]
        return table

    def submission(self, test_table, predictions):
        from compkit_siim.submit import probability_frame

        return probability_frame(test_table, predictions)

    def labels(self):
        return None  # probabilities, not class names

    def read_sample(self, root: Path):
        """Derived from the organisers' sample: its ImageIds in its order, with a ``Pneumothorax`` probability."""
        from compkit_siim.submit import derived_sample

        return derived_sample(super().read_sample(root))


@hookimpl
def register_competitions(register):
    register(Siim())
    register(SiimClassification())
