"""compkit plugin for Pascal VOC2012 semantic segmentation as in d2l (13.9-13.11): 21 classes, mean IoU,
d2l's FCN on an ImageNet ResNet-18 (model family ``fcn``), the test predictions written as palette PNGs.

VOC2012's test labels are not public (its server scores them), so, as d2l does, the test set is the
official val list with its labels: ``compkit submit`` predicts it and reports its mean IoU. The split is
the official one (``fixed_split``): train.txt is only trained on, val.txt is fold 0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from compkit import Competition, Config, hookimpl
from compkit.errors import CompkitError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SHA1 = "4e443f8a2eca6b1dac8a6c57641b67dd40621a49"
# d2l's VOC_CLASSES, in the palette's order: class i is colour i of the VOC colour map
CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
           "tv/monitor")
IGNORE_INDEX = 255  # the objects' outlines, colour (224, 224, 192): never scored nor trained on
SEED_BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class VocConfig(Config):
    """The kit's keys and VOC's own: the training crop."""

    crop_height: int = 320  # voc: training random crop height, a multiple of 32 (smaller images are padded)
    crop_width: int = 480  # voc: training random crop width, a multiple of 32 (smaller images are padded)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("crop_height", "crop_width"):
            value = getattr(self, key)
            if isinstance(value, int) and (value < 32 or value % 32):
                raise CompkitError(f"config key {key!r} must be a positive multiple of 32 (the FCN's stride), "
                                   f"got {value}")


class Voc(Competition):
    name = "voc"
    title = "Pascal VOC2012 semantic segmentation (d2l's FCN; the test set is the val list)"
    kaggle = None  # not on Kaggle: nothing to upload
    task = "multiclass-segmentation"
    classes = CLASSES
    metric = "miou"
    ignore_index = IGNORE_INDEX
    id_column = "id"
    stratify = None  # the split is the official one (fixed_split)
    sample_submission = None
    output_files = True  # a palette PNG per test image, as SegmentationClass holds them
    # The source (d2l 13.11): ImageNet ResNet-18 body, 1x1 conv to 21, bilinear-initialised transposed conv;
    # SGD without momentum, lr 1e-3, weight decay 1e-3 on every parameter, 5 epochs of batch 32, random
    # 320x480 crops, constant lr, the last epoch's weights. d2l backpropagates the SUM of the batch's
    # per-image losses; compkit's losses are means, so the same steps need lr and wd scaled by the batch
    # size (as in the hotdog plugin): lr 1e-3 * 32, wd 1e-3 / 32.
    defaults = VocConfig(
        model="fcn/resnet18",
        pretrained=True,
        loss="ce",
        epochs=5,
        batch_size=SEED_BATCH_SIZE,
        lr=1e-3 * SEED_BATCH_SIZE,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=1e-3 / SEED_BATCH_SIZE,
        decay_1d=True,
        scheduler="none",
        checkpoint="last",  # d2l keeps the last epoch; the val list is also the test set, so none is chosen on it
        tta="none",
        crop_height=320,
        crop_width=480,
    )

    def download(self, root: Path) -> None:
        """The VOC2012 trainval tarball (about 2 GB, SHA-1 checked) from the organisers' site, unpacked
        into ``root`` (VOCdevkit/VOC2012/...), then its segmentation lists read once as a check."""
        from compkit import kaggle
        from compkit_voc import layout

        kaggle.url(URL, root, sha1=SHA1)
        layout.split_table(Path(root))

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_voc.demo import write_demo

        write_demo(Path(root), seed)

    def train_table(self, root: Path) -> pd.DataFrame:
        """train.txt then val.txt: ``id``, ``split``, ``path`` (JPEG), ``mask`` (label PNG), ``height``, ``width``."""
        from compkit_voc import layout

        return layout.split_table(Path(root))

    def test_table(self, root: Path) -> pd.DataFrame:
        """The val list (VOC2012's test labels are not public), the same columns."""
        table = self.train_table(root)
        return table[table["split"] == "val"].reset_index(drop=True)

    def test_targets(self, root: Path) -> np.ndarray:
        """uint8 (N, S, S): the val labels, padded top-left with the ignore index as valid items are."""
        from compkit_voc import layout

        return layout.padded_labels(Path(root), self.test_table(root), layout.pad_size(self.train_table(root)))

    def fixed_split(self, table: pd.DataFrame, root: Path) -> np.ndarray:
        """The official split: train.txt rows are only trained on (-1), val.txt rows are fold 0."""
        import numpy as np

        if "split" not in table.columns:
            raise CompkitError(f"{self.name}: the train table has no 'split' column (train|val) to split on")
        return np.where(table["split"].to_numpy() == "val", 0, -1)

    def transforms(self, stage: str, config: Config, pad_to: int = 512):
        """Training: a random ``crop_height`` x ``crop_width`` crop (an image smaller than it is padded at a
        random place: image with the mean colour, label with the ignore index; d2l drops such images),
        then a horizontal flip. Valid / test: padded top-left to ``pad_to`` square (labels with the ignore
        index), so a batch stacks and the stride fits; no resize. ImageNet normalisation."""
        import albumentations as A
        import cv2

        fill = tuple(round(255 * value) for value in self.mean)
        if stage == "train":
            height, width = _crop(config)
            steps = [A.RandomCrop(height, width, pad_if_needed=True, pad_position="random",
                                  border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=IGNORE_INDEX),
                     A.HorizontalFlip(p=0.5)]
        else:
            steps = [A.PadIfNeeded(pad_to, pad_to, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                                   fill=fill, fill_mask=IGNORE_INDEX)]
        return A.Compose([*steps, A.Normalize(mean=self.mean, std=self.std)])

    def dataset(self, table: pd.DataFrame, root: Path, stage: str, config: Config):
        """Items ``{"image": float32 [3, H, W], "target": int64 [H, W]}`` (no target at test); valid and test
        images are padded to the data's ``layout.pad_size``, the same for every table."""
        from compkit_voc import layout
        from compkit_voc.dataset import VocDataset

        pad_to = layout.pad_size(self.train_table(root))
        labels = None if stage == "test" else [Path(root) / path for path in table["mask"]]
        return VocDataset([Path(root) / path for path in table["path"]], labels,
                          self.transforms(stage, config, pad_to=pad_to))

    def write_files(self, test_table: pd.DataFrame, predictions: list[np.ndarray], folder: Path) -> list[Path]:
        """``<id>.png`` per test image: its class map cropped to the image, a VOC palette PNG."""
        from compkit_voc import layout

        return layout.write_predictions(test_table, predictions, Path(folder))

    def report(self, targets: np.ndarray, probabilities: np.ndarray) -> str:
        """Mean IoU, pixel accuracy and each class's IoU of out-of-fold class maps (N, H, W)."""
        from compkit_voc.scores import report

        return report(targets, probabilities, CLASSES, IGNORE_INDEX)


def _crop(config: Config) -> tuple[int, int]:
    """(crop_height, crop_width) of a VocConfig; the source's 320 x 480 for a plain Config."""
    return getattr(config, "crop_height", 320), getattr(config, "crop_width", 480)


def fcn_model(variant: str | None, num_classes: int, in_channels: int = 3, pretrained: bool = False):
    """``fcn/<timm backbone>``: d2l's FCN on that backbone (``fcn/resnet18`` is the source's)."""
    from compkit_voc.fcn import build

    return build(variant or "resnet18", num_classes, in_channels=in_channels, pretrained=pretrained)


@hookimpl
def register_competitions(register):
    register(Voc())


@hookimpl
def register_models(register):
    register("fcn", fcn_model)
