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

from compkit import oof as oof_file
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
        from compkit.tasks import Task

        assert competition.name == self.name
        assert isinstance(competition.kind, Task)  # a registered task name, or a Task
        assert competition.num_classes >= 1 and competition.activation in ("softmax", "sigmoid", None)

    def test_top_module_imports_without_torch(self) -> None:
        code = f"import sys, {self.module}; assert 'torch' not in sys.modules, 'torch imported'"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    def test_train_item_matches_the_data_contract(self, competition: Competition, root: Path, config: Config) -> None:
        import torch

        table = competition.train_table(root)
        assert competition.id_column in table.columns
        item = competition.dataset(table.head(2), root, "train", config)[0]
        assert isinstance(item["image"], torch.Tensor)
        competition.kind.check_item(item, competition, self.item_size(config))  # raises what does not fit

    def item_size(self, config: Config) -> tuple[int, int] | None:
        """The (height, width) of a training item's image: the config's image size (a plugin whose training
        transforms crop to another size overrides this)."""
        return tuple(config.size)

    def test_test_item_has_no_target(self, competition: Competition, root: Path, config: Config) -> None:
        table = competition.test_table(root)
        item = competition.dataset(table.head(2), root, "test", config)[0]
        assert "target" not in item and item["image"].ndim == 3

    def test_default_model_and_loss_forward_backward(self, competition: Competition, root: Path,
                                                     config: Config) -> None:
        import torch

        from compkit.pipeline._build import build_model

        reg = registry.get()
        model = build_model(competition, config, pretrained=False)
        dataset = competition.dataset(competition.train_table(root).head(2), root, "train", config)
        batch = _collate(competition, [dataset[0], dataset[1]])
        model.train()
        loss_function = reg.loss(config.loss, config=config, competition=competition)
        loss = competition.kind.training_loss(model, loss_function, batch["image"], batch["target"])
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    def test_submission_matches_the_sample(self, competition: Competition, root: Path) -> None:
        table = competition.test_table(root)
        rng = np.random.default_rng(0)
        if competition.output_files:
            pytest.skip("file outputs: test_files_are_written checks them")
        predictions = competition.kind.random_predictions(len(table), competition, rng)
        frame = competition.submission(table, predictions)
        sample = competition.read_sample(root)
        if sample is None:  # no sample submission (not a Kaggle competition): one row per test row, in order
            assert frame.iloc[:, 0].astype(str).tolist() == table[competition.id_column].astype(str).tolist()
            assert not frame.isna().any().any()
            labels = competition.labels()
            assert labels is None or frame[competition.label_column].isin(labels).all()
        else:
            submission.validate(frame, sample, competition.labels(), competition.blank_columns)

    def test_files_are_written(self, competition: Competition, root: Path, config: Config,
                               tmp_path: Path) -> None:
        """A competition whose submission is files writes them from random predictions of the size its test
        items have; one with a table needs no ``write_files``."""
        import torch

        if not competition.output_files:
            pytest.skip("a table submission: test_submission_matches_the_sample checks it")
        table = competition.test_table(root)
        image = competition.dataset(table.head(1), root, "test", config)[0]["image"]
        rng = np.random.default_rng(0)
        task = competition.kind
        logits = torch.from_numpy(rng.normal(size=(len(table), task.outputs(competition), *image.shape[1:])))
        probabilities = task.squeeze(task.probabilities(logits)).numpy()
        written = competition.write_files(table, [task.decided(p) for p in probabilities], tmp_path)
        assert written and all(Path(path).is_file() and Path(path).is_relative_to(tmp_path) for path in written)

    def test_score_is_perfect_on_the_truth(self, competition: Competition, root: Path, config: Config) -> None:

        table = competition.train_table(root)
        dataset = competition.dataset(table, root, "valid", config)
        task = competition.kind
        batch = _collate(competition, [dataset[i] for i in range(len(dataset))])
        truth = task.host_target(batch["target"], batch["image"], compact=True)  # as the out-of-fold file keeps them
        best = competition.score(truth, task.perfect(truth, competition))
        assert np.isfinite(best)
        if competition.metric in ("accuracy", "dice", "miou", "pixel_accuracy", "wheat", "coco-map", "map50"):
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
    written = workdir / "submissions" / name
    (path,) = sorted(written.glob("*.csv")) or sorted(entry for entry in written.iterdir() if entry.is_dir())
    sidecar = json.loads(path.with_suffix(".json").read_text())
    targets = np.asarray(oof_file.load(fold_dir / "oof.npz").targets)  # per image for detection
    return EndToEnd(metrics, oof, path, sidecar, float(best), trivial_baseline(competition, targets))


def _collate(competition: Competition, items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of ``items`` as the training loader makes it (the task's collate)."""
    from torch.utils.data import default_collate

    return (competition.kind.collate_fn() or default_collate)(items)


def trivial_baseline(competition: Competition, targets: np.ndarray) -> float:
    """The score of the best constant prediction a model must beat (the task's: majority class, all empty,
    all background...)."""
    return float(competition.score(targets, competition.kind.constant(targets, competition)))
