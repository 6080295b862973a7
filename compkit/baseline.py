"""A classical floor for every classification competition: a random forest on flattened, downscaled pixels.

It uses the competition's own folds, datasets (so the same decoding and normalisation, without
augmentation) and ``score``, so its CV sits beside a network's, and needs no Engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compkit.competition import Competition
from compkit.config import Config


def pixels(comp: Competition, table: Any, root: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (N, C*size*size), targets as the dataset gives them) for ``table``'s rows."""
    from tqdm.auto import tqdm

    dataset = comp.dataset(table, root, "valid", comp.defaults.replace(image_size=size))
    features, targets = [], []
    for index in tqdm(range(len(dataset)), desc=f"pixels at {size}px", unit="img", leave=False):
        item = dataset[index]
        features.append(item["image"].numpy().reshape(-1))
        targets.append(item["target"].numpy())
    return np.stack(features).astype(np.float32), np.stack(targets)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, n_classes: int, *, trees: int,
                seed: int) -> np.ndarray:
    """A random forest's class probabilities (N, n_classes) for ``x_valid``; soft targets train on their argmax."""
    from sklearn.ensemble import RandomForestClassifier

    labels = y_train.argmax(1) if y_train.ndim > 1 else y_train.astype(np.int64)
    forest = RandomForestClassifier(n_estimators=trees, n_jobs=-1, random_state=seed, min_samples_leaf=2)
    forest.fit(x_train, labels)
    probabilities = np.zeros((len(x_valid), n_classes), dtype=np.float32)
    probabilities[:, forest.classes_] = forest.predict_proba(x_valid)  # a class absent from the fold stays 0
    return probabilities


def cross_validate(comp: Competition, table: Any, assignment: np.ndarray, root: Any, *, size: int, trees: int,
                   seed: int = Config.seed) -> dict[str, Any]:
    """Per-fold and overall out-of-fold scores of the forest on the competition's folds."""
    if not comp.kind.one_label:
        raise comp.kind.refuse(comp, "compkit baseline", "single-label classification")
    x, y = pixels(comp, table, root, size)
    probabilities = np.zeros((len(x), comp.num_classes), dtype=np.float32)
    scores = {}
    for fold in sorted(set(assignment.tolist()) - {-1}):  # -1: rows only ever trained on
        valid = assignment == fold
        probabilities[valid] = fit_predict(x[~valid], y[~valid], x[valid], comp.num_classes, trees=trees, seed=seed)
        scores[fold] = float(comp.score(y[valid], probabilities[valid]))
    return {"score": float(comp.score(y, probabilities)), "folds": scores}
