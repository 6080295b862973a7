"""compkit plugin for Kaggle's digit-recognizer: 28x28 handwritten digits stored as CSV pixel rows.

The smallest complete plugin, and the template to copy. Its demo data is real: scikit-learn's
bundled 8x8 digit scans, upscaled to 28x28, so a fresh machine trains on real data offline.
"""

from __future__ import annotations

from pathlib import Path

from compkit import Competition, Config, hookimpl

PIXELS = [f"pixel{i}" for i in range(28 * 28)]


class Digits(Competition):
    name = "digits"
    title = "Digit Recognizer (MNIST)"
    kaggle = "digit-recognizer"
    classes = tuple(str(digit) for digit in range(10))
    id_column = "ImageId"
    label_column = "Label"
    in_channels = 1
    mean, std = (0.5,), (0.5,)
    # A small-image recipe: ResNet-18 at 28x28 from scratch with light shifts. At 28 px its ImageNet
    # stem leaves 1x1 pixel for the last stage, where BatchNorm's running averages lag weights that
    # a high learning rate moves fast and evaluation collapses to chance: precise_bn recomputes them
    # with each epoch's final weights. Cosine after half an epoch of warm-up learns from the first
    # epoch, where one-cycle spends its first 30 % far below its peak.
    defaults = Config(model="timm/resnet18", image_size=28, epochs=10, batch_size=64, lr=1e-3,
                      optimizer="adamw", weight_decay=5e-4, scheduler="cosine", warmup_epochs=0.5,
                      precise_bn=200, tta="none")

    def download(self, root: Path) -> None:
        from compkit import kaggle

        kaggle.competition_files(self.kaggle, root)

    def make_demo(self, root: Path, seed: int = 0) -> None:
        from compkit_digits.demo import write_demo

        write_demo(root, seed)

    def train_table(self, root: Path):
        import pandas as pd

        path = root / "train.csv"
        table = _checked(pd.read_csv(path, low_memory=False), path, ["label", *PIXELS])
        table = table.rename(columns={"label": "target"})
        return pd.concat([pd.DataFrame({self.id_column: range(1, len(table) + 1)}), table], axis=1)

    def test_table(self, root: Path):
        import pandas as pd

        path = root / "test.csv"
        table = _checked(pd.read_csv(path, low_memory=False), path, PIXELS)  # ImageId is the 1-based row number
        return pd.concat([pd.DataFrame({self.id_column: range(1, len(table) + 1)}), table], axis=1)

    def transforms(self, stage: str, config: Config):
        import albumentations as A

        steps = [A.Resize(*config.size)]
        if stage == "train":  # no flips: a mirrored 2 is not a 2
            steps.append(A.Affine(translate_percent=0.08, rotate=(-10, 10), scale=(0.9, 1.1), p=0.8))
        return A.Compose([*steps, A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0)])

    def dataset(self, table, root: Path, stage: str, config: Config):
        from compkit.datasets import ArrayDataset

        images = table[PIXELS].to_numpy("uint8").reshape(-1, 28, 28)
        targets = None if stage == "test" else table["target"].to_numpy()
        return ArrayDataset(images, targets, self.transforms(stage, config))


def _checked(table, path: Path, columns: list[str]):
    """``table`` with integer columns if every value is in range; else an error naming row and value.

    Rows are the file's line numbers (the header is line 1). A file cut mid-row shows as missing values.
    """
    import numpy as np
    import pandas as pd

    from compkit.errors import CompkitError

    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise CompkitError(f"{path}: missing column(s) {', '.join(missing[:5])}"
                           f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}; expected label (train only) "
                           "and pixel0..pixel783")
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy("float64")
    highs = np.array([9 if column == "label" else 255 for column in columns])
    with np.errstate(invalid="ignore"):
        bad = np.isnan(values) | (values < 0) | (values > highs) | (values != np.round(values))
    if bad.any():
        row, index = np.argwhere(bad)[0]
        column, value = columns[index], table[columns[index]].iloc[row]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise CompkitError(f"{path}, line {row + 2}, column {column}: {shown} is not an "
                           f"integer 0..{highs[index]}" + (" (is the file cut short?)" if row == len(table) - 1 else ""))
    table[columns] = values.astype("uint8")
    if "label" in columns:
        table["label"] = table["label"].astype("int64")
    return table


@hookimpl
def register_competitions(register):
    register(Digits())
