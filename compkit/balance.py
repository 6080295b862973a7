"""Skewed training data: class weights for the loss (``class_weights = balanced``) and a class-balanced
sampler (``sampler = balanced``), both computed on a fold's training rows.

Weights follow scikit-learn's "balanced": class c weighs n / (k * count_c) (n rows, k classes), so
every class carries the same total weight. A multi-label task weighs each class's positives by
negatives / positives (BCE's ``pos_weight``), which balances each class's yes/no the same way. The
sampler draws rows with probability proportional to 1 / the count of their class, with replacement,
as many per epoch as there are training rows: every class is drawn about equally often.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError


def check(comp: Competition, config: Config) -> None:
    """Refuse what cannot work, before any work: a segmentation task, a balanced sampler on a multi-label
    task, a loss that takes no class weights."""
    if config.class_weights == "none" and config.sampler == "uniform":
        return
    chosen = " and ".join(name for name, off in ((f"class_weights = {config.class_weights}", "none"),
                                                 (f"sampler = {config.sampler}", "uniform"))
                          if not name.endswith(f"= {off}"))
    task = _task(comp)
    if task.dense:
        raise CompkitError(f"{chosen}: class balance is for classification; {comp.name} is {task.name} (its "
                           "classes are pixels): set class_weights = none and sampler = uniform")
    if config.sampler == "balanced" and not task.one_label:
        raise CompkitError(f"sampler = balanced draws rows by their one class; {comp.name} is {task.name} (a "
                           "row has several): set sampler = uniform (class_weights = balanced works for "
                           "multi-label)")
    if config.class_weights == "balanced":
        import torch

        from compkit import registry

        # a loss that takes no class weights is refused now, not after the data is loaded
        registry.get().loss(config.loss, config=config, competition=comp,
                            class_weights=torch.ones(comp.num_classes))


def hard_targets(comp: Competition, table: Any, dataset: Any) -> np.ndarray:
    """The training rows' targets as the dataset gives them: its ``targets`` (compkit's ArrayDataset),
    else the table's ``target`` column (the Competition convention); (N,) class indices or (N, C)."""
    targets = getattr(dataset, "targets", None)
    if targets is None and "target" in table.columns:
        targets = table["target"].to_numpy()
    if targets is None:
        raise CompkitError(f"{comp.name}'s training dataset ({type(dataset).__name__}) has no ``targets`` "
                           "and its table no target column: compkit cannot see the training labels "
                           "(class_weights, sampler, soft_targets need them)")
    targets = np.asarray(targets)
    if len(targets) != len(dataset):
        raise CompkitError(f"{comp.name}'s training dataset has {len(dataset)} rows but {len(targets)} "
                           "targets")
    return targets


def class_labels(comp: Competition, targets: np.ndarray) -> np.ndarray:
    """Classification: int64 (N,) the class of each row (the argmax of a dense target). Multi-label:
    int64 (N, C), 1 where a class is present (a target of at least 0.5)."""
    targets = np.asarray(targets)
    if _task(comp).several_labels:
        return (targets.reshape(len(targets), -1) >= 0.5).astype(np.int64)
    labels = targets.argmax(axis=1) if targets.ndim == 2 else targets.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= comp.num_classes):
        raise CompkitError(f"{comp.name}: a training target is outside 0..{comp.num_classes - 1}: "
                           f"{int(labels.min() if labels.min() < 0 else labels.max())}")
    return labels.astype(np.int64)


def class_weights(comp: Competition, labels: np.ndarray) -> np.ndarray:
    """float32 (C,): n / (k * count_c) per class (classification), negatives / positives (multi-label).
    A class with no training rows (or, multi-label, no negatives) is an error: its weight is infinite."""
    n, k = len(labels), comp.num_classes
    if _task(comp).several_labels:
        positives = labels.sum(axis=0)
        negatives = n - positives
        empty = [comp.classes[c] for c in range(k) if positives[c] == 0 or negatives[c] == 0]
        _refuse_empty(comp, empty, "present in every or in no training row")
        return (negatives / positives).astype(np.float32)
    counts = np.bincount(labels, minlength=k)
    names = [comp.classes[c] if c < len(comp.classes) else str(c) for c in range(k)]
    _refuse_empty(comp, [names[c] for c in range(k) if counts[c] == 0], "in no training row")
    return (n / (k * counts)).astype(np.float32)


def sample_weights(comp: Competition, labels: np.ndarray) -> np.ndarray:
    """float64 (N,): 1 / the training count of each row's class (the sampler's unnormalised draw
    probabilities)."""
    counts = np.bincount(labels, minlength=comp.num_classes)
    return 1.0 / counts[labels]


def describe(comp: Competition, labels: np.ndarray, weights: np.ndarray | None) -> str:
    """One line: each class's training count (and weight)."""
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=comp.num_classes)
    names = list(comp.classes) or [str(c) for c in range(comp.num_classes)]
    cells = [f"{name}: {int(count)}" + (f" (weight {weights[c]:.3g})" if weights is not None else "")
             for c, (name, count) in enumerate(zip(names, counts))]
    return ", ".join(cells)


def _refuse_empty(comp: Competition, classes: list[str], why: str) -> None:
    if classes:
        raise CompkitError(f"class_weights = balanced: class(es) {', '.join(classes)} of {comp.name} are "
                           f"{why} of this fold, so their weight would be infinite: set class_weights = none")


def _task(comp: Any) -> Any:
    from compkit import tasks

    return tasks.of(comp)
