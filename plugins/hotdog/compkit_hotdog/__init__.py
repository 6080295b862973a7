"""compkit plugin for d2l's hotdog / not-hotdog fine-tuning example (not a Kaggle competition): accuracy.

The zip has labelled train and test folders and no submission format, so after unpacking the plugin
writes a Kaggle-style one beside it: test.csv (anonymous ids -> images), sample_submission.csv
(id,label) and test_labels.csv (the truth), which ``compkit hotdog-score`` checks a submission against.
"""

from __future__ import annotations

from pathlib import Path

from compkit import Competition, Config, hookimpl
from compkit.errors import CompkitError

URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"
CLASSES = ("hotdog", "not-hotdog")  # the folder names, in torchvision ImageFolder's (sorted) order
SEED_BATCH_SIZE = 128


class Hotdog(Competition):
    name = "hotdog"
    title = "Hotdog / not hotdog (d2l fine-tuning example)"
    kaggle = None
    classes = CLASSES
    metric = "accuracy"
    id_column = "id"
    label_column = "label"
    stratify = "target"
    sample_submission = "sample_submission.csv"
    # The seed (d2l 14.2): ImageNet ResNet-18, new head at 10x lr, SGD without momentum, lr 5e-5,
    # wd 1e-3, batch 128, 5 epochs, constant lr. d2l backpropagates the SUM of the batch's losses;
    # compkit's losses are means, so the same steps need lr and wd scaled by the batch size (128).
    defaults = Config(
        model="timm/resnet18",
        pretrained=True,
        image_size=224,
        epochs=5,
        batch_size=SEED_BATCH_SIZE,
        lr=5e-5 * SEED_BATCH_SIZE,
        head_lr_multiplier=10.0,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=1e-3 / SEED_BATCH_SIZE,
        scheduler="none",
        tta="hflip",
    )

    def download(self, root: Path) -> None:
        """hotdog.zip by URL (SHA-1 checked), unpacked to hotdog/, then the submission files written."""
        from compkit import kaggle
        from compkit_hotdog.layout import write_test_index

        kaggle.url(URL, root, sha1=SHA1)
        write_test_index(Path(root))

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_hotdog.demo import write_demo
        from compkit_hotdog.layout import write_test_index

        write_demo(root, seed)
        write_test_index(Path(root))

    def train_table(self, root: Path):
        """``id`` (class/stem), ``label``, ``target`` (class index) and ``path`` of hotdog/train/<class>/*."""
        from compkit_hotdog.layout import image_table

        return image_table(Path(root), "train")

    def test_table(self, root: Path):
        """``id`` and ``path`` from test.csv, in sample_submission.csv's order."""
        import pandas as pd

        path = Path(root) / "test.csv"
        if not path.is_file():
            raise CompkitError(
                f"{path} is missing; run: compkit download hotdog (or --demo), which writes it"
            )
        return pd.read_csv(path, dtype={"id": str})

    def transforms(self, stage: str, config: Config):
        """d2l's: train a random resized crop + flip; evaluate the centre after resizing the short side
        to 256/224 of the size (the longer side of an H x W size); ImageNet normalisation."""
        import albumentations as A

        height, width = config.size
        if stage == "train":
            steps = [A.RandomResizedCrop((height, width)), A.HorizontalFlip(p=0.5)]
        else:
            steps = [A.SmallestMaxSize(max_size=round(max(height, width) * 256 / 224)), A.CenterCrop(height, width)]
        return A.Compose([*steps, A.Normalize(mean=self.mean, std=self.std)])


def score_submission(root: Path, submission_path: Path) -> float:
    """The accuracy of a submission CSV (id,label) against test_labels.csv."""
    import pandas as pd

    truth = pd.read_csv(Path(root) / "test_labels.csv", dtype=str)
    predicted = pd.read_csv(submission_path, dtype=str)
    merged = truth.merge(predicted, on="id", how="left", suffixes=("_truth", "_predicted"))
    missing = merged["label_predicted"].isna()
    if missing.any():
        raise CompkitError(
            f"{submission_path} has no row for {int(missing.sum())} test ids, "
            f"e.g. {', '.join(merged['id'][missing][:3])}"
        )
    return float((merged["label_truth"] == merged["label_predicted"]).mean())


@hookimpl
def register_competitions(register):
    register(Hotdog())


@hookimpl
def register_commands(cli):
    import click

    @cli.command("hotdog-score")
    @click.argument("submission", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--data-dir",
        envvar="COMPKIT_DATA_DIR",
        default="data",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder that replaces ./data: the hotdog data is DIR/hotdog (env COMPKIT_DATA_DIR).",
    )
    def hotdog_score(submission: Path, data_dir: Path) -> None:
        """Test accuracy of a hotdog SUBMISSION against the test split's labels.

        \b
        Example:
          compkit submit hotdog && compkit hotdog-score submissions/hotdog/20261201-120000.csv
        """
        click.echo(f"test accuracy: {score_submission(data_dir / 'hotdog', submission):.4f}")
