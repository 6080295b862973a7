"""``compkit download siim`` through the real kaggle client against the core's loopback fake Kaggle."""

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

import compkit
from compkit.errors import CompkitError
from compkit_siim import Siim, layout
from compkit_siim.demo import TEST_TRUTH, write_demo


def load_fake_kaggle():
    """The core's tests/fake_kaggle.py, found beside an editable compkit (a checkout), else None."""
    path = Path(compkit.__file__).resolve().parents[1] / "tests" / "fake_kaggle.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("compkit_tests_fake_kaggle", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


fake_kaggle = load_fake_kaggle()
pytestmark = pytest.mark.skipif(
    fake_kaggle is None, reason="needs the core's tests/fake_kaggle.py (a checkout)"
)


@pytest.fixture
def mirror_files(tmp_path):
    """The mirror's files as the dataset zip holds them: everything under siim/, nothing derived."""
    source = tmp_path / "source"
    write_demo(source, seed=2)
    return {
        path.relative_to(source).as_posix(): path.read_bytes()
        for path in (source / "siim").rglob("*")
        if path.is_file()
    }


@pytest.fixture
def fake(monkeypatch, tmp_path):
    server = fake_kaggle.FakeKaggle().start()
    home = tmp_path / "home"
    home.mkdir()
    fake_kaggle.point_client_at(monkeypatch, server, home)
    yield server
    server.stop()


def test_download_leaves_the_raw_layout_and_derives_the_sample(fake, mirror_files, tmp_path):
    fake.datasets[layout.MIRROR] = mirror_files
    root = tmp_path / "data" / "siim"
    Siim().download(root)
    Siim().download(root)  # a second call finds everything and asks nothing
    assert fake.count("DownloadDataset") == 1
    sample = pd.read_csv(root / layout.SAMPLE, dtype=str)
    test_ids = sorted(path.stem for path in (root / layout.TEST_IMAGES).rglob("*.dcm"))
    assert sample["ImageId"].tolist() == test_ids and set(sample["EncodedPixels"]) == {"-1"}
    assert not (root / TEST_TRUTH).exists()
    assert len(Siim().train_table(root)) == len(
        [name for name in mirror_files if name.startswith(layout.TRAIN_IMAGES.as_posix())]
    )


def test_a_dataset_in_another_layout_is_reported(fake, tmp_path):
    fake.datasets[layout.MIRROR] = {"train_png/a.png": b"png"}
    with pytest.raises(CompkitError, match="lacks siim/train-rle.csv.*found: .*train_png"):
        Siim().download(tmp_path / "data" / "siim")
