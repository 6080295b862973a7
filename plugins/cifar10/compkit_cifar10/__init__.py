"""compkit plugin for Kaggle's CIFAR-10 - Object Recognition in Images: 32x32 PNGs, ten classes, accuracy.

Registers the model family ``resnet18-cifar``: ResNet-18 with a 3x3 stride-1 stem and no max-pool.
The 50,000 train and 300,000 test PNGs are decoded once into a uint8 cache (``data/cifar10/cache``).
"""

from __future__ import annotations

from pathlib import Path

from compkit import Competition, Config, hookimpl
from compkit.errors import CompkitError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Cifar10(Competition):
    name = "cifar10"
    title = "CIFAR-10 - Object Recognition in Images"
    kaggle = "cifar-10"
    classes = CLASSES
    metric = "accuracy"
    id_column = "id"
    label_column = "label"
    stratify = "target"
    sample_submission = "sampleSubmission.csv"
    # The training set's per-channel statistics (the std of all pixels, not the often-quoted 0.20).
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    # Better than the seed (ResNet-18, Adam 1e-3, batch 256, flips, 10 epochs: 85.1 %): what the speed
    # records share (facts/performance.md): SGD-nesterov one-cycle, label smoothing, crop+flip, flip TTA.
    defaults = Config(
        model="resnet18-cifar",
        pretrained=False,
        loss="ce-smooth",
        image_size=32,
        epochs=30,
        batch_size=256,
        lr=0.1,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        scheduler="onecycle",
        warmup_epochs=6.0,
        amp="bf16",
        channels_last=True,
        tta="hflip",
    )

    def download(self, root: Path) -> None:
        """The competition's files, then train.7z and test.7z unpacked beside them (once)."""
        from compkit import kaggle
        from compkit_cifar10.data import unpack

        kaggle.competition_files(self.kaggle, root)
        unpack(Path(root))

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_cifar10.demo import write_demo

        write_demo(root, seed)

    def train_table(self, root: Path):
        """``id``, ``label`` (class name), ``target`` (class index) and ``path`` (train/<id>.png)."""
        root = Path(root)
        table = _read_csv(root / "trainLabels.csv", ["id", "label"])
        unknown = ~table["label"].isin(CLASSES)
        if unknown.any():
            row = int(unknown.to_numpy().argmax())
            raise CompkitError(
                f"{root / 'trainLabels.csv'}: row {row} (id {table['id'][row]}) has label "
                f"{table['label'][row]!r}; the classes are {', '.join(CLASSES)}"
            )
        table["target"] = (
            table["label"].map({name: index for index, name in enumerate(CLASSES)}).astype("int64")
        )
        table["path"] = _image_paths(root, "train", table["id"])
        return table

    def test_table(self, root: Path):
        """``id`` and ``path`` (test/<id>.png) in sampleSubmission.csv's order: Kaggle has no test.csv."""
        root = Path(root)
        table = _read_csv(root / "sampleSubmission.csv", ["id"])[["id"]]
        table["path"] = _image_paths(root, "test", table["id"])
        return table

    def transforms(self, stage: str, config: Config):
        """Train: zero-pad each side by its 1/8 (4 px at 32), random crop back, horizontal flip; then normalise."""
        import albumentations as A
        import cv2

        height, width = config.size
        steps = [A.Resize(height, width)]  # a no-op on cached images
        if stage == "train":
            steps += [
                A.PadIfNeeded(height + 2 * (height // 8), width + 2 * (width // 8),
                              border_mode=cv2.BORDER_CONSTANT, fill=0),
                A.RandomCrop(height, width),
                A.HorizontalFlip(p=0.5),
            ]
        return A.Compose([*steps, A.Normalize(mean=self.mean, std=self.std)])

    def dataset(self, table, root: Path, stage: str, config: Config):
        """Cached images at ``config.image_size`` with int64 class-index targets (none at test)."""
        from compkit.cache import rows_of
        from compkit.datasets import ArrayDataset
        from compkit_cifar10.data import cached_images

        root = Path(root)
        full = self.test_table(root) if stage == "test" else self.train_table(root)
        images = cached_images(root, full, stage, config.size)
        rows = rows_of(full[self.id_column], table[self.id_column])
        targets = None if stage == "test" else table["target"].to_numpy(copy=True)
        return ArrayDataset(images, targets, self.transforms(stage, config), rows=rows)


def _read_csv(path: Path, columns: list[str]):
    import pandas as pd

    if not path.is_file():
        raise CompkitError(f"{path} is missing; run: compkit download cifar10 (or --demo)")
    table = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise CompkitError(
            f"{path} has no column(s) {', '.join(missing)}; columns: {', '.join(table.columns)}"
        )
    return table


def _image_paths(root: Path, folder: str, ids):
    if not (root / folder).is_dir():
        hint = (
            f"unpack {root / (folder + '.7z')} with: compkit download cifar10"
            if (root / f"{folder}.7z").is_file()
            else "run: compkit download cifar10 (or --demo)"
        )
        raise CompkitError(f"{root / folder} is missing; {hint}")
    return folder + "/" + ids + ".png"


@hookimpl
def register_competitions(register):
    register(Cifar10())


@hookimpl
def register_models(register):
    def resnet18_cifar(variant, num_classes, in_channels=3, pretrained=False):
        from compkit_cifar10.model import resnet18_cifar as build

        return build(variant, num_classes, in_channels, pretrained)

    resnet18_cifar.__doc__ = (
        "ResNet-18 for 32x32 images: 3x3 stride-1 first convolution, no initial max-pool."
    )
    register("resnet18-cifar", resnet18_cifar)
