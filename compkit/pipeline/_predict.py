"""A run's models predicting a test table together: submit, pseudo-labels and compkit predict read it here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compkit import _distributed, console, tta
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _build


def predict_batches(comp: Competition, config: Config, root: Path, run_dir: Path, models: list[str],
                    test_table: Any, view_mode: str, device: str | None,
                    batch_size: int | None, checkpoint: str = "best.pt") -> Iterator[np.ndarray]:
    """Per test batch, in order, the mean over ``models`` (fold0, ..., full) of each one's TTA-merged
    probabilities, (B, C) or (B, H, W): the test set is read once and every model predicts each batch."""
    if _distributed.world_size() > 1:
        raise CompkitError("submit predicts in one process; run it without torchrun")
    loader = _build.loader(comp, test_table, root, "test", config, batch_size=batch_size, device=device)
    views = tta.views(view_mode)
    engines = []
    for name in models:
        engine = _build.make_engine(comp, config, _build.build_model(comp, config, pretrained=False), device=device)
        engine.load(run_dir / name / checkpoint)
        engines.append(engine)
    names = ", ".join(name.replace("fold", "fold ") for name in models)
    with engines[0]._progress(loader, f"predict ({len(models)} model{'s' * (len(models) > 1)})") as progress:
        for batch in progress:
            outputs = [engine.predict_batch(batch["image"], views) for engine in engines]
            if len(outputs) > 1:  # the task merges: a mean of probabilities, boxes by weighted boxes fusion
                yield comp.kind.merge([comp.kind.to_numpy(output) for output in outputs])
            else:
                yield comp.kind.to_numpy(outputs[0])
    console.echo(f"predicted {len(test_table)} test samples with {names} (tta {view_mode})")


def predict(comp: Competition, config: Config, root: Path, run_dir: Path, models: list[str], test_table: Any,
            view_mode: str, device: str | None, batch_size: int | None, checkpoint: str = "best.pt") -> np.ndarray:
    """The mean over ``models`` (fold0, ..., full) of each one's TTA-merged probabilities: (N, C) or (N, H, W)."""
    batches = list(predict_batches(comp, config, root, run_dir, models, test_table, view_mode, device, batch_size,
                                   checkpoint))
    return np.concatenate(batches) if batches else np.zeros((0,), dtype=np.float32)
