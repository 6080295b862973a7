"""The digits plugin: the shared contract, and the demo's real digits in Kaggle's layout."""

from pathlib import Path

import pandas as pd
import pytest

import compkit_digits
from compkit.config import read_toml
from compkit.testing import CompetitionContract, end_to_end


class TestDigits(CompetitionContract):
    name = "digits"
    module = "compkit_digits"
    image_size = 28


def test_demo_is_in_kaggles_layout(tmp_path):
    from compkit_digits.demo import write_demo

    write_demo(tmp_path, seed=0)
    train = pd.read_csv(tmp_path / "train.csv")
    test = pd.read_csv(tmp_path / "test.csv")
    sample = pd.read_csv(tmp_path / "sample_submission.csv")
    assert list(train.columns[:2]) == ["label", "pixel0"] and train.shape[1] == 785
    assert test.shape[1] == 784 and list(sample.columns) == ["ImageId", "Label"]
    assert len(sample) == len(test) and sample["ImageId"].iloc[0] == 1
    assert set(train["label"]) == set(range(10))
    assert train.iloc[:, 1:].to_numpy().max() == 255


DEMO_RECIPE = Path(compkit_digits.__file__).parent / "recipes" / "digits-demo.toml"


@pytest.mark.slow
def test_demo_recipe_learns_real_digits_from_the_first_epochs(tmp_path):
    # the shipped demo recipe, on scikit-learn's real scans: about a minute on two
    # CPU cores. Validation must follow training from the start, not jump when the lr reaches zero
    # (the old recipe sat at chance, 0.09-0.20, for six of its eight epochs).
    recipe = read_toml(DEMO_RECIPE)
    result = end_to_end("digits", tmp_path, *(f"{key}={value}" for key, value in recipe.items()), n_folds=5)
    accuracy = result.metrics["accuracy"].tolist()
    assert len(accuracy) == recipe["epochs"]
    assert min(accuracy[1:]) > 0.9, accuracy
    assert result.best_score >= 0.97 > result.baseline
    submission = pd.read_csv(result.submission)
    assert list(submission.columns) == ["ImageId", "Label"]
    truth = pd.read_csv(tmp_path / "data" / "digits" / "test_labels.csv")
    assert (submission["Label"] == truth["Label"]).mean() > 0.95  # held-out real scans


def setting(row, column, value):
    """A change to a train table: ``value`` in ``column`` of ``row`` (negative rows count from the end)."""

    def change(table):
        table[column] = table[column].astype(object)
        table.iloc[row, table.columns.get_loc(column)] = value
        return table

    return change


@pytest.mark.parametrize("change, message", [
    (setting(0, "label", "seven"), r"line 2, column label: 'seven' is not an integer 0..9"),
    (setting(0, "label", 11), r"line 2, column label: 11 is not an integer 0..9"),
    (setting(-1, "label", -1), r"column label: -1 is not an integer 0..9"),
    (setting(0, "pixel5", 300), r"line 2, column pixel5: 300 is not an integer 0..255"),
    (lambda table: table.drop(columns=["pixel783"]), r"missing column\(s\) pixel783"),
])
def test_bad_training_rows_are_named(tmp_path, change, message):
    from compkit.errors import CompkitError
    from compkit.registry import get
    from compkit_digits.demo import write_demo

    write_demo(tmp_path, seed=0)
    path = tmp_path / "train.csv"
    change(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(CompkitError, match=message):
        get().competition("digits").train_table(tmp_path)


def test_a_file_cut_mid_row_and_a_missing_label_are_named(tmp_path):
    from compkit.errors import CompkitError
    from compkit.registry import get
    from compkit_digits.demo import write_demo

    write_demo(tmp_path, seed=0)
    path = tmp_path / "train.csv"
    text = path.read_text()
    path.write_text(text[: text.rindex(",", 0, len(text) - 400)] + "\n")  # the last row loses ~200 pixels
    digits = get().competition("digits")
    with pytest.raises(CompkitError, match=r"line \d+, column pixel\d+: nan .*cut short"):
        digits.train_table(tmp_path)
    lines = text.splitlines()
    lines[3] = "," + lines[3].split(",", 1)[1]  # no label on line 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CompkitError, match=r"line 4, column label: nan is not an integer"):
        digits.train_table(tmp_path)
