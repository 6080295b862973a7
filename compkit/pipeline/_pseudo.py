"""Training data from an earlier run of the same competition: soft targets and pseudo-labels.

``soft_targets = RUN`` (``compkit train NAME --fold K --soft-targets RUN [--soft-weight 0.3]``): each
training row's target becomes ``soft_weight * p + (1 - soft_weight) * label``, ``p`` being RUN's
out-of-fold probabilities for that row, matched by id over all of RUN's ``fold*/oof.npz`` (Plant
Pathology 2020's first place trained on 0.3 x OOF + 0.7 x label). The targets reach the loss as (N, C)
probabilities, as mixup's do, so the loss must take those (ce, ce-smooth, bce, the plugins' dense-ce).
Validation rows keep their hard labels, so the score stays comparable with other runs.

Leakage: a row's out-of-fold probabilities come from the one fold model of RUN that did not train on
it, so its own label never reaches its soft target, and they are valid as soft targets for any fold
of any split. (Second order: RUN's other fold models did train on this fold's validation rows, so a
little of what they learnt there reaches this fold through its training rows' soft targets; the CV
may be slightly optimistic, as for any stacking or distillation from the same folds.)

``pseudo = RUN`` (``--pseudo RUN [--threshold 0.95]``), classification: RUN's folds (every finished
``fold*/best.pt``, with RUN's TTA) predict the test set once; the prediction is cached in
``RUN/test_predictions.npz`` (keyed by the checkpoints, the TTA and the test ids), so every fold of
the new run, and a resume, reuses it. Test rows whose top probability is at least the threshold
become extra training rows labelled with their predicted class; they never enter a validation fold.
The models predicting them trained on this fold's validation rows, which the CV may reflect a little.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compkit import _distributed, _io, console, oof, places
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.pipeline import _common, _predict

PREDICTIONS = "test_predictions.npz"  # in the pseudo-labelling run's folder: its folds' test probabilities
CHECKED_ROWS = 8  # test rows read both ways to check that the test table serves as training rows


def prepare(comp: Competition, config: Config, runs_root: Path, root: Path, table: pd.DataFrame,
            train_rows: np.ndarray, *, run: str, device: str | None = None) -> dict[str, Any]:
    """``_fit.fit_fold``'s ``oof_targets`` and ``pseudo_rows`` for the config's ``soft_targets`` and
    ``pseudo`` (None when off), checked now: before the run folder is made. ``train_rows``: the rows of
    ``table`` this fold trains on."""
    extra: dict[str, Any] = {"oof_targets": None, "pseudo_rows": None}
    default = Config()
    for key, used_by in (("soft_weight", "soft_targets"), ("pseudo_threshold", "pseudo")):
        if getattr(config, key) != getattr(default, key) and not getattr(config, used_by):
            flag = "--" + used_by.replace("_", "-")
            console.note(f"{key} = {getattr(config, key):g} has no effect without {used_by} ({flag} RUN)")
    if config.soft_targets:
        source = source_run(runs_root, config.soft_targets, "soft_targets", run)
        extra["oof_targets"] = oof_targets(comp, source, table, train_rows)
        console.echo(f"soft targets: {config.soft_weight:g} x run {source.name}'s out-of-fold probabilities + "
                     f"{1 - config.soft_weight:g} x the label, for {int(train_rows.sum())} training rows "
                     "(validation keeps its labels)")
    if config.pseudo:
        source = source_run(runs_root, config.pseudo, "pseudo", run)
        extra["pseudo_rows"] = pseudo_rows(comp, config, source, root, table, device=device or config.device,
                                           validated=not train_rows.all())
    return extra


def source_run(runs_root: Path, name: str, key: str, run: str) -> Path:
    """The folder of the run ``key`` (soft_targets, pseudo) names; it must exist and not be this run."""
    places.check_run_name(name)
    if name == places.LATEST:
        raise CompkitError(f"{key} = latest: name the run itself ({key} is recorded in config.json, and "
                           "latest moves with every new run)")
    if name == run:
        raise CompkitError(f"{key} = {name}: a run cannot learn from its own predictions; train a new "
                           "--run-name")
    path = runs_root / name
    if not (path / "config.json").is_file():
        runs = [other for other in places.list_runs(runs_root)
                if (runs_root / other / "config.json").is_file()]
        raise CompkitError(f"{key} = {name}: there is no run {path} (runs: {', '.join(runs) or 'none'})")
    return path


# -- soft targets -----------------------------------------------------------------------------


def oof_targets(comp: Competition, source: Path, table: pd.DataFrame, train_rows: np.ndarray) -> np.ndarray:
    """float32 (len(table), C): RUN's out-of-fold probabilities of the ``train_rows`` of ``table`` (rows
    summing to 1 for a softmax task), NaN on the other rows. Every training row must have one."""
    if not comp.kind.soft_targets:
        raise CompkitError(f"soft_targets: {comp.name} is {comp.kind.name}; soft targets from out-of-fold "
                           "probabilities are for classification and multi-label tasks")
    parts, unfinished = {}, []
    for path in sorted(source.glob("fold*/oof.npz")):
        number = path.parent.name[4:]
        if not number.isdigit():
            continue
        if not (path.parent / _common.DONE).is_file():
            unfinished.append(int(number))  # still training, or interrupted: its oof.npz is not final
            continue
        parts[int(number)] = oof.load(path)
    known = (np.concatenate([np.asarray(part.ids).astype(str) for part in parts.values()]) if parts
             else np.array([]))
    probabilities = (np.concatenate([part.probabilities() for part in parts.values()]) if parts
                     else np.zeros((0, comp.num_classes), np.float32))
    if probabilities.ndim != 2 or probabilities.shape[1] != comp.num_classes:
        raise CompkitError(f"soft_targets = {source.name}: its out-of-fold predictions have shape "
                           f"{probabilities.shape[1:]}, not ({comp.num_classes},) classes of {comp.name}")
    index = pd.Index(known)
    if not index.is_unique:
        raise CompkitError(f"soft_targets = {source.name}: its folds' oof.npz share ids (e.g. "
                           f"{index[index.duplicated()][0]}); were they trained on different splits?")
    wanted = table[comp.id_column].astype(str).to_numpy()[train_rows]
    found = index.get_indexer(wanted)
    if (found < 0).any():
        raise CompkitError(_missing(comp, source, wanted[found < 0], parts, unfinished))
    chosen = probabilities[found]
    if comp.activation == "softmax":  # stored as float16: make each row sum to 1 again
        chosen = chosen / np.maximum(chosen.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    targets = np.full((len(table), comp.num_classes), np.nan, dtype=np.float32)
    targets[train_rows] = chosen
    return targets


def _missing(comp: Competition, source: Path, missing: np.ndarray, parts: dict[int, Any],
             unfinished: list[int]) -> str:
    """Which training rows lack an out-of-fold prediction in ``source``, by the fold of its split."""
    from compkit import folds

    shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    head = (f"soft_targets = {source.name}: {len(missing)} training row(s) have no out-of-fold prediction "
            f"in run {source.name} (ids {shown})")
    if not (source / folds.FILE_NAME).is_file():
        return head + f"; it has finished oof.npz for fold(s) {sorted(parts) or 'none'}"
    split = folds.read(source)
    where = pd.Series(split["fold"].to_numpy(), index=split[split.columns[0]].astype(str))
    folds_missing = sorted({int(where[i]) for i in missing if i in where.index})
    outside = [i for i in missing if i not in where.index]
    reasons = []
    if folds_missing:
        stopped = [k for k in folds_missing if k in unfinished]
        stopped_note = f" (fold(s) {', '.join(map(str, stopped))} did not finish training)" if stopped else ""
        reasons.append(f"fold(s) {', '.join(map(str, folds_missing))} of {source.name} have no finished "
                       f"oof.npz{stopped_note}: train them first, e.g. compkit train {comp.name} --fold "
                       f"{folds_missing[0]} --run-name {source.name}")
    if outside:
        reasons.append(f"{len(outside)} of them (e.g. {outside[0]}) are not in {source.name}'s split at all: "
                       "it was made on other data")
    return head + "; " + "; ".join(reasons)


def soft_targets(comp: Competition, hard: np.ndarray, oof_rows: np.ndarray, weight: float) -> np.ndarray:
    """float32 (N, C): ``weight * oof + (1 - weight) * label`` per row, the label one-hot for (N,) class
    indices, as it is for (N, C) targets; a row whose oof is NaN (a pseudo row) keeps its label."""
    hard = np.asarray(hard)
    if hard.ndim == 1:
        labels = np.zeros((len(hard), comp.num_classes), dtype=np.float32)
        labels[np.arange(len(hard)), hard.astype(np.int64)] = 1.0
    else:
        labels = hard.reshape(len(hard), -1).astype(np.float32)
    if labels.shape != oof_rows.shape:
        raise CompkitError(f"soft_targets: the training targets have shape {labels.shape[1:]} but the "
                           f"out-of-fold probabilities {oof_rows.shape[1:]}")
    known = ~np.isnan(oof_rows).any(axis=1)
    labels[known] = weight * oof_rows[known] + (1 - weight) * labels[known]
    return labels


def with_targets(dataset: Any, targets: np.ndarray) -> Any:
    """``dataset`` whose item ``i`` has target ``targets[i]``: a copy of an ArrayDataset with them as its
    ``targets`` (gpu_data keeps working), any other dataset wrapped."""
    from compkit.datasets import ArrayDataset

    if isinstance(dataset, ArrayDataset):
        replaced = copy.copy(dataset)
        replaced.targets = targets
        return replaced
    return Retargeted(dataset, targets)


class Retargeted:
    """A torch dataset: ``dataset``'s items with ``target`` replaced by float32 ``targets[index]``. Its
    ``transform`` (the augment policy goes there) and randomness are the wrapped dataset's."""

    def __init__(self, dataset: Any, targets: np.ndarray) -> None:
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        item = dict(self.dataset[index])
        item["target"] = torch.from_numpy(np.array(self.targets[index], dtype=np.float32))
        return item

    @property
    def transform(self) -> Any:
        return self.dataset.transform

    @transform.setter
    def transform(self, value: Any) -> None:
        self.dataset.transform = value

    def randomness(self) -> str:
        from compkit.loaders import randomness

        return randomness(self.dataset)


# -- pseudo-labels ----------------------------------------------------------------------------


def pseudo_rows(comp: Competition, config: Config, source: Path, root: Path, train_table: pd.DataFrame, *,
                device: str, validated: bool = True) -> pd.DataFrame:
    """The test rows RUN predicts with a top probability of at least ``pseudo_threshold``, as training
    rows: the test table's columns plus ``target`` (the predicted class index; also one-hot class
    columns when the train table has a column per class). Prints how many of each class, and with
    ``validated`` (a fold, not a full fit) a note on the validation score."""
    if not comp.kind.one_label:
        raise CompkitError(f"pseudo: hard pseudo-labels are for classification; {comp.name} is {comp.kind.name}")
    test = _common.table(comp, root, "test").reset_index(drop=True)
    probabilities = test_probabilities(comp, source, root, test, device)
    top, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    keep = top >= config.pseudo_threshold
    rows = test[keep].reset_index(drop=True).copy()  # a copy: one block, not a fragmented frame
    rows["target"] = predicted[keep].astype(np.int64)
    names = list(comp.classes)
    if names and all(name in train_table.columns for name in names):
        for c, name in enumerate(names):
            rows[name] = (predicted[keep] == c).astype(train_table[name].dtype)
    if len(rows):
        check_rows(comp, config, root, test[keep].reset_index(drop=True), rows)
    counts = np.bincount(predicted[keep], minlength=comp.num_classes)
    per_class = ", ".join(f"{names[c] if c < len(names) else c}: {int(n)}" for c, n in enumerate(counts))
    note = (f"\nnote: they were predicted by {source.name}'s folds, which trained on this fold's validation "
            "rows: its score may be a little optimistic")
    console.echo(f"pseudo-labels: {len(rows)} of {len(test)} test rows of run {source.name} at top probability >= "
                 f"{config.pseudo_threshold:g} added to the training rows ({per_class})"
                 + (note if validated else ""))
    return rows


def check_rows(comp: Competition, config: Config, root: Path, test: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Refuse unless ``comp.dataset`` reads test rows as training rows: a few of ``rows``, read as
    validation rows (no augmentation), must give the images the test dataset gives and their targets."""
    import torch

    picked = np.unique(np.linspace(0, len(rows) - 1, min(CHECKED_ROWS, len(rows))).astype(np.int64))
    fix = f"{comp.name}'s test table cannot serve as training rows, so --pseudo cannot add them"
    try:
        as_train = comp.dataset(rows.iloc[picked].reset_index(drop=True), root, "valid", config)
        as_test = comp.dataset(test.iloc[picked].reset_index(drop=True), root, "test", config)
        pairs = [(as_train[i], as_test[i]) for i in range(len(picked))]
    except Exception as error:  # a plugin's own lookup failing on test ids: any error means no
        raise CompkitError(f"{fix}: its dataset fails on test rows with a target ({type(error).__name__}: "
                           f"{error})") from None
    for position, (train_item, test_item) in zip(picked, pairs):
        target = train_item.get("target")
        label = None if target is None else int(target.argmax() if target.ndim else target)
        row = f"test row {test[comp.id_column].iloc[position]} read as a training row"
        if not torch.equal(train_item["image"], test_item["image"]):
            raise CompkitError(f"{fix}: {row} is another image than the test dataset gives (does the dataset "
                               "look training ids up in the train table?)")
        if label != int(rows["target"].iloc[position]):
            raise CompkitError(f"{fix}: {row} has target {label}, not its pseudo-label "
                               f"{int(rows['target'].iloc[position])}")


def test_probabilities(comp: Competition, source: Path, root: Path, test: pd.DataFrame,
                       device: str) -> np.ndarray:
    """float32 (N, C): the mean of RUN's finished folds' TTA probabilities on ``test``, from
    ``RUN/test_predictions.npz`` when it was made from the same checkpoints, TTA and test ids."""
    from compkit import runs

    run_config = runs.run_config(source, comp)
    trained = sorted(int(path.parent.name[4:]) for path in source.glob("fold*/best.pt")
                     if path.parent.name[4:].isdigit())
    if not trained:
        raise CompkitError(f"pseudo = {source.name}: the run has no trained fold (fold*/best.pt) to predict "
                           "with")
    unfinished = [k for k in trained if not (source / f"fold{k}" / _common.DONE).is_file()]
    if unfinished:
        raise CompkitError(f"pseudo = {source.name}: fold(s) {', '.join(map(str, unfinished))} did not "
                           f"finish training: resume them (compkit train {comp.name} --fold {unfinished[0]} "
                           f"--resume --run-name {source.name}) before pseudo-labelling with the run")
    models = [f"fold{k}" for k in trained]
    key = cache_key(source, models, run_config.tta, test[comp.id_column])
    path = source / PREDICTIONS
    cached = _read_cache(path, key, (len(test), comp.num_classes))
    if cached is not None:
        console.echo(f"pseudo-labels: test predictions of {source.name}'s fold(s) {', '.join(map(str, trained))} "
                     f"from {path}")
        return cached
    if _distributed.world_size() > 1:
        raise CompkitError(f"pseudo = {source.name}: its test predictions are made in one process and {path} "
                           f"does not hold them yet: run compkit train {comp.name} --fold 0 --pseudo "
                           f"{source.name} --dry-run once without torchrun (it writes them), then torchrun")
    probabilities = _predict.predict(comp, run_config, root, source, models, test, run_config.tta, device,
                                     None)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.shape != (len(test), comp.num_classes):
        raise CompkitError(f"pseudo = {source.name}: its test predictions have shape {probabilities.shape}, "
                           f"not ({len(test)}, {comp.num_classes})")
    with _io.atomic_open(path, "wb") as handle:  # a file object: np.savez would append .npz to a path
        np.savez(handle, key=np.array(key), probabilities=probabilities)
    console.echo(f"pseudo-labels: saved the test predictions of {source.name} to {path} (later folds reuse them)")
    return probabilities


def cache_key(source: Path, models: list[str], tta: str, ids: Any) -> str:
    """What the cached test predictions depend on: each checkpoint (size, mtime), the TTA and the test ids."""
    checkpoints = []
    for model in models:
        stat = (source / model / "best.pt").stat()
        checkpoints.append([model, stat.st_size, stat.st_mtime_ns])
    test_ids = hashlib.sha1("\n".join(pd.Series(ids).astype(str)).encode()).hexdigest()
    return json.dumps({"checkpoints": checkpoints, "tta": tta, "test_ids": test_ids}, sort_keys=True)


def _read_cache(path: Path, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached probabilities when ``path`` holds them for ``key``; None otherwise (also when damaged)."""
    import zipfile

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["key"]) != key or archive["probabilities"].shape != shape:
                return None
            return archive["probabilities"].astype(np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
