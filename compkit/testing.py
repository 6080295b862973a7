"""Contract tests every competition plugin reuses: subclass ``CompetitionContract`` in one line.

    from compkit.testing import CompetitionContract

    class TestDigits(CompetitionContract):
        name = "digits"
        module = "compkit_digits"

The checks run on the competition's demo data at a small image size, on CPU.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compkit import registry, submission
from compkit.competition import Competition
from compkit.config import Config


class CompetitionContract:
    """Registration, no torch at import, dataset items, one forward/backward, submission columns."""

    name: str = ""  # the registered competition name
    module: str = ""  # the plugin's top-level module, imported without torch
    image_size: int = 64  # small, so the checks stay fast on CPU
    overrides: dict[str, Any] = {}  # noqa: RUF012 - read-only in subclasses

    @pytest.fixture(scope="class")
    @classmethod
    def competition(cls) -> Competition:
        return registry.get().competition(cls.name)

    @pytest.fixture(scope="class")
    @classmethod
    def root(cls, competition: Competition, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return _demo_root(competition, tmp_path_factory)

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls, competition: Competition) -> Config:
        return competition.defaults.replace(image_size=cls.image_size, pretrained=False, batch_size=4,
                                            num_workers=0, device="cpu", **cls.overrides)

    def test_registered_under_its_name(self, competition: Competition) -> None:
        assert competition.name == self.name
        assert competition.task in ("classification", "multilabel", "segmentation")
        assert competition.task == "segmentation" or len(competition.classes) >= 2

    def test_top_module_imports_without_torch(self) -> None:
        code = f"import sys, {self.module}; assert 'torch' not in sys.modules, 'torch imported'"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    def test_train_item_matches_the_data_contract(self, competition: Competition, root: Path, config: Config) -> None:
        import torch

        table = competition.train_table(root)
        assert competition.id_column in table.columns
        item = competition.dataset(table.head(2), root, "train", config)[0]
        image, target = item["image"], item["target"]
        assert image.dtype == torch.float32 and image.ndim == 3
        assert image.shape == (competition.in_channels, self.image_size, self.image_size)
        if competition.task == "segmentation":
            assert target.dtype == torch.float32 and target.shape == (1, self.image_size, self.image_size)
        elif target.dtype == torch.int64:
            assert competition.task == "classification" and target.ndim == 0
        else:
            assert target.dtype == torch.float32 and target.shape == (len(competition.classes),)

    def test_test_item_has_no_target(self, competition: Competition, root: Path, config: Config) -> None:
        table = competition.test_table(root)
        item = competition.dataset(table.head(2), root, "test", config)[0]
        assert "target" not in item and item["image"].ndim == 3

    def test_default_model_and_loss_forward_backward(self, competition: Competition, root: Path,
                                                     config: Config) -> None:
        import torch

        reg = registry.get()
        model = reg.model(config.model, competition.num_classes, competition.in_channels, pretrained=False)
        dataset = competition.dataset(competition.train_table(root).head(2), root, "train", config)
        batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
        logits = model(batch["image"])
        loss = reg.loss(config.loss, config=config, competition=competition)(logits, batch["target"])
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    def test_submission_matches_the_sample(self, competition: Competition, root: Path) -> None:
        table = competition.test_table(root)
        rng = np.random.default_rng(0)
        if competition.task == "segmentation":
            predictions = (rng.random((len(table), 16, 16)) > 0.7).astype(np.float32)
        else:
            predictions = rng.dirichlet(np.ones(len(competition.classes)), size=len(table)).astype(np.float32)
        frame = competition.submission(table, predictions)
        sample = competition.read_sample(root)
        if sample is None:  # no sample submission (not a Kaggle competition): one row per test row, in order
            assert frame.iloc[:, 0].astype(str).tolist() == table[competition.id_column].astype(str).tolist()
            assert not frame.isna().any().any()
            labels = competition.labels()
            assert labels is None or frame[competition.label_column].isin(labels).all()
        else:
            submission.validate(frame, sample, competition.labels())

    def test_score_is_perfect_on_the_truth(self, competition: Competition, root: Path, config: Config) -> None:
        table = competition.train_table(root)
        dataset = competition.dataset(table, root, "valid", config)
        targets = np.stack([dataset[i]["target"].numpy() for i in range(len(dataset))])
        if competition.task == "segmentation":
            targets = targets[:, 0]
            perfect = targets.astype(np.float32)
        elif targets.ndim == 1:
            perfect = np.eye(len(competition.classes), dtype=np.float32)[targets]
        else:
            perfect = targets.astype(np.float32)
        best = competition.score(targets, perfect)
        assert np.isfinite(best)
        if competition.metric in ("accuracy", "dice"):
            assert best == pytest.approx(1.0)


def demo_fixtures(name: str) -> tuple[Any, Any]:
    """Module-scoped ``competition`` and ``root`` (its demo data) fixtures for a plugin's own tests.

        competition, root = demo_fixtures("hotdog")
    """

    @pytest.fixture(scope="module")
    def competition() -> Competition:
        return registry.get().competition(name)

    @pytest.fixture(scope="module")
    def root(competition: Competition, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return _demo_root(competition, tmp_path_factory)

    return competition, root


def _demo_root(competition: Competition, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder holding the competition's demo data (seed 0)."""
    root = tmp_path_factory.mktemp(f"{competition.name}-demo")
    competition.make_demo(root, 0)
    return root


@dataclasses.dataclass
class EndToEnd:
    """What a demo run left behind: the fold's metrics, its out-of-fold file and the submission."""

    metrics: Any  # pandas DataFrame of fold<K>/metrics.csv
    oof: dict[str, np.ndarray]
    submission: Path
    sidecar: dict[str, Any]
    best_score: float
    baseline: float


def end_to_end(name: str, workdir: Path, *settings: str, n_folds: int = 3, fold: int = 0,
               submit_options: tuple[str, ...] = ()) -> EndToEnd:
    """Run download --demo, folds, train and submit through the CLI in ``workdir``, on CPU.

    ``settings`` are ``key=value`` config overrides for a short run, e.g. ``"epochs=2"``.
    """
    import json

    import pandas as pd
    from click.testing import CliRunner

    from compkit.cli import cli

    places = ["--data-dir", str(workdir / "data"), "--runs-dir", str(workdir / "runs")]
    sets = [part for setting in ("device=cpu", "num_workers=0", *settings) for part in ("--set", setting)]
    steps = [
        ["download", name, "--demo", "--data-dir", str(workdir / "data")],
        ["folds", name, "--n-folds", str(n_folds), "--data-dir", str(workdir / "data")],
        ["train", name, "--fold", str(fold), "--run", "e2e", "--quiet", *places, *sets],
        ["submit", name, "--run", "e2e", *places, "--submissions-dir", str(workdir / "submissions"),
         "--device", "cpu", *submit_options],
    ]
    runner = CliRunner()
    for step in steps:
        result = runner.invoke(cli, step, catch_exceptions=False)
        assert result.exit_code == 0, f"compkit {' '.join(step)} failed:\n{result.output}"
    competition = registry.get().competition(name)
    fold_dir = workdir / "runs" / name / "e2e" / f"fold{fold}"
    metrics = pd.read_csv(fold_dir / "metrics.csv")
    scores = metrics[competition.metric]
    best = scores.max() if competition.higher_is_better else scores.min()
    oof = dict(np.load(fold_dir / "oof.npz", allow_pickle=False))
    (path,) = sorted((workdir / "submissions" / name).glob("*.csv"))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    return EndToEnd(metrics, oof, path, sidecar, float(best), trivial_baseline(competition, oof["targets"]))


def trivial_baseline(competition: Competition, targets: np.ndarray) -> float:
    """The score of the best constant prediction a model must beat (majority class, all empty, ...)."""
    n = len(targets)
    if competition.task == "segmentation":
        constant = np.zeros(targets.shape, dtype=np.float32)
    else:
        classes = len(competition.classes)
        counts = np.bincount(targets, minlength=classes) if targets.ndim == 1 else targets.sum(axis=0)
        constant = np.tile(np.eye(classes, dtype=np.float32)[int(np.argmax(counts))], (n, 1))
    return float(competition.score(targets, constant))
