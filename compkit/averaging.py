"""``compkit average``: the weights of a fold's best epochs averaged into one model (checkpoint averaging,
as the SIIM pneumothorax winners did), BatchNorm recomputed for it, scored on the fold's validation rows.

Training keeps the epochs' weights with ``--set keep_top=K`` (``fold<K>/top/epochNNN.pt``, see
``Engine(keep_top=)``). The average is written to ``fold<K>/averaged.pt``; with ``keep_if_better`` it also
replaces best.pt when it scores better than best.pt does (the previous best.pt kept as best_epoch.pt, its
oof.npz as oof_epoch.npz, and oof.npz rewritten with the average's predictions, so the CV that submit and
runs show stays the CV of best.pt).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compkit import _io, console, places
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError
from compkit.places import Places
from compkit.runs import run_config

AVERAGED = "averaged.pt"
BEST_EPOCH = "best_epoch.pt"  # best.pt as training left it, once the average replaced it
OOF_EPOCH = "oof_epoch.npz"  # and its out-of-fold predictions


def average(name: str, where: Places, *, run: str | None = None, fold_spec: str = "0", top: int = 3,
            keep_if_better: bool = False, device: str | None = None,
            batch_size: int | None = None) -> list[dict[str, Any]]:
    """Average the ``top`` best kept epochs of each fold of ``fold_spec`` ("all", "K" or "K,K") of ``run``
    (default: latest); print and return one result per fold.

    Every fold is checked (its top/ files and metrics.csv) before any is averaged.
    """
    from compkit.pipeline import _common

    if top < 2:
        raise CompkitError(f"--top {top}: an average needs at least 2 epochs")
    comp = _common.competition(name)
    root = _common.data_root(comp, where)
    runs_root = where.runs / name
    run = places.resolve_run(runs_root, run)
    run_dir = runs_root / run
    config = run_config(run_dir, comp)
    folds = chosen_folds(run_dir, fold_spec)
    plans = {k: top_checkpoints(comp, run_dir / f"fold{k}", top, run, name) for k in folds}
    rows, assignment = _split(comp, root, run_dir)
    results = []
    for k in folds:
        fold_dir = run_dir / f"fold{k}"
        # a training of this fold writes top/, best.pt and oof.npz too: never both at once
        with _io.locked(_common.fold_lock(runs_root, run, f"fold{k}"), wait=False, what=fold_dir):
            results.append(average_fold(comp, config, root, fold_dir, k, plans[k], rows, assignment,
                                        keep_if_better=keep_if_better, device=device, batch_size=batch_size))
    return results





def chosen_folds(run_dir: Path, spec: str) -> list[int]:
    """The folds of ``spec``: "all" (every fold with a best.pt) or comma-separated numbers."""
    from compkit.pipeline._common import choose_folds

    return choose_folds(run_dir, spec.strip())


def top_checkpoints(
    comp: Competition, fold_dir: Path, top: int, run: str, name: str
) -> list[tuple[int, float, Path]]:
    """(epoch, score, file) of the ``top`` best epochs kept in ``fold_dir/top``, best first, ranked by the
    validation metric of metrics.csv (a tie: the lower validation loss, then the earlier epoch)."""
    from compkit import engine

    folder = fold_dir / engine.TOP_FOLDER
    files = (
        {engine.top_file_epoch(path): path for path in folder.glob("epoch*.pt")} if folder.is_dir() else {}
    )
    files.pop(None, None)
    if len(files) < 2:
        raise CompkitError(
            f"{folder} holds {len(files)} epoch checkpoint(s); an average needs at least 2. Train the fold "
            f"keeping its best epochs: compkit train {name} --fold {fold_dir.name[4:]} --set keep_top=K "
            f"(e.g. 3) --run-name NEW, or go on with run {run}: --resume --epochs N --set keep_top=K "
            "(only the epochs trained from then on can be kept)"
        )
    history = metrics_rows(fold_dir / "metrics.csv", comp.metric)
    unknown = sorted(set(files) - {row["epoch"] for row in history})
    if unknown:
        raise CompkitError(
            f"{files[unknown[0]]} is for epoch {unknown[0]}, which {fold_dir / 'metrics.csv'} has no "
            "row for: the folder mixes two trainings; delete the file or train the fold again"
        )
    kept = [row for row in history if row["epoch"] in files]
    ranked = engine.top_epochs(kept, comp.metric, comp.higher_is_better, "metric", len(kept))
    if len(ranked) < 2:
        raise CompkitError(
            f"fewer than 2 of the epochs kept in {folder} have a finite {comp.metric} in "
            f"{fold_dir / 'metrics.csv'}: nothing to rank them by"
        )
    if len(ranked) < top:
        console.note(f"{folder} holds {len(ranked)} epochs, fewer than --top {top}: averaging those")
    score = {row["epoch"]: row[comp.metric] for row in kept}
    return [(epoch, score[epoch], files[epoch]) for epoch in ranked[:top]]


def metrics_rows(path: Path, metric: str) -> list[dict[str, Any]]:
    """metrics.csv as rows with int ``epoch`` and float losses and metric."""
    import pandas as pd

    if not path.is_file():
        raise CompkitError(f"{path} is missing: the fold has no training history to rank its epochs by")
    frame = pd.read_csv(path)
    missing = [
        column for column in ("epoch", "train_loss", "valid_loss", metric) if column not in frame.columns
    ]
    if missing:
        raise CompkitError(f"{path} has no column(s) {', '.join(missing)}: is it a compkit metrics.csv?")
    return [{"epoch": int(row["epoch"]), "train_loss": float(row["train_loss"]),
             "valid_loss": float(row["valid_loss"]), metric: float(row[metric])}
            for row in frame.to_dict("records")]


def average_state_dicts(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of ``states`` (model state dicts, best first) for floating tensors; any other entry (integer
    buffers such as BatchNorm's num_batches_tracked) is the first's."""
    first = states[0]
    for index, state in enumerate(states[1:], 1):
        if state.keys() != first.keys():
            different = sorted(set(state) ^ set(first))
            raise CompkitError(
                f"checkpoint {index + 1} of the average has other weights than the first "
                f"(e.g. {', '.join(different[:3])}): not the same model"
            )
        for key, value in first.items():
            if hasattr(value, "shape") and tuple(state[key].shape) != tuple(value.shape):
                raise CompkitError(
                    f"weight {key} has shape {tuple(state[key].shape)} in checkpoint {index + 1} "
                    f"of the average and {tuple(value.shape)} in the first: not the same model"
                )
    averaged = {}
    for key, value in first.items():
        if hasattr(value, "is_floating_point") and value.is_floating_point():
            total = sum(state[key].double() for state in states)
            averaged[key] = (total / len(states)).to(value.dtype)
        else:
            averaged[key] = value.clone() if hasattr(value, "clone") else value
    return averaged


def _split(comp: Competition, root: Path, run_dir: Path) -> tuple[Any, Any]:
    """The training table and each row's fold in the split the run trained on (its own folds.csv)."""
    from compkit import folds
    from compkit.pipeline import _common

    rows = _common.table(comp, root, "train")
    split = (folds.read(run_dir) if (run_dir / folds.FILE_NAME).is_file()
             else folds.read(root, folds.file_name(comp)))
    return rows, folds.assignments(rows, split, comp.id_column)


def average_fold(comp: Competition, config: Config, root: Path, fold_dir: Path, fold: int,
                 chosen: list[tuple[int, float, Path]], rows: Any, assignment: Any, *, keep_if_better: bool,
                 device: str | None, batch_size: int | None) -> dict[str, Any]:
    """Average ``chosen`` (epoch, score, file), recompute BatchNorm on the fold's training rows, score the
    average on its validation rows, write averaged.pt, and with ``keep_if_better`` make it best.pt when it
    beats best.pt."""
    from compkit import engine, registry
    from compkit.loaders import seed_everything
    from compkit.pipeline import _build

    checkpoints = [engine._read_checkpoint(path) for _, _, path in chosen]
    # what each checkpoint predicts with: its EMA weights when it kept them (as Engine.load does)
    weights = [c["ema"] if c.get("ema") is not None else c["model"] for c in checkpoints]
    averaged = average_state_dicts(weights)
    reg = registry.get()
    model = _build.build_model(comp, config, pretrained=False)
    loss = reg.loss(config.loss, config=config, competition=comp)
    train_table = rows[assignment != fold].reset_index(drop=True)
    valid_table = rows[assignment == fold].reset_index(drop=True)
    if not len(valid_table):
        raise CompkitError(
            f"fold {fold} has no validation rows in the run's split: nothing to score the average on"
        )
    valid_ids = valid_table[comp.id_column].astype(str).tolist()
    with _build.make_engine(comp, config, model, loss, device=device, quiet=False) as trainer:
        target = trainer.ema.module if trainer.ema is not None else trainer.model
        try:
            target.load_state_dict(averaged)
        except RuntimeError as error:
            raise CompkitError(
                f"the weights in {chosen[0][2]} do not fit {config.model} (the run's config.json "
                f"changed?): {str(error).splitlines()[0]}"
            ) from None
        train_loader = _build.loader(comp, train_table, root, "train", config, device=device)
        seed_everything(config.seed)  # the same BatchNorm statistics on every rerun
        trainer._recompute_batchnorm(train_loader, batches=config.precise_bn or len(train_loader))
        valid_loader = _build.loader(
            comp, valid_table, root, "valid", config, batch_size=batch_size, device=device
        )
        valid = trainer._evaluate(valid_loader)
        scoring = engine._Run(
            comp.metric, comp.higher_is_better, fold_dir, config.to_dict(), valid_ids, comp.score, None
        )
        value, valid_loss = trainer._score(valid, scoring)
        state = {key: tensor.detach().cpu().clone() for key, tensor in target.state_dict().items()}
    epochs = sorted(epoch for epoch, _, _ in chosen)
    best_path = fold_dir / "best.pt"
    best = engine._read_checkpoint(best_path)
    baseline, baseline_name = best.get("best_score"), _describe_best(best, fold_dir)
    checkpoint = {key: value for key, value in checkpoints[0].items() if key not in ("model", "ema")}
    checkpoint |= {"model": state, "ema": None, "best_score": value,
                   "averaged": {"epochs": epochs, "scores": [float(score) for _, score, _ in chosen],
                                "score": value, "valid_loss": valid_loss}}
    _io.torch_save(checkpoint, fold_dir / AVERAGED)
    better = baseline is None or engine._improved(value, float(baseline), comp.higher_is_better)
    kept = keep_if_better and better
    if kept:
        _keep_as_best(fold_dir, checkpoint, valid, valid_ids)
    line = (
        f"fold {fold}: average of epochs {', '.join(map(str, epochs))}: {comp.metric} {value:.5f} against "
        f"{baseline_name} {_number(baseline)}"
    )
    if kept:
        line += f": kept as best.pt (the previous one is {BEST_EPOCH})"
    elif keep_if_better:
        line += ": best.pt stays"
    else:
        line += (f": wrote {fold_dir / AVERAGED}; best.pt unchanged (--keep-if-better makes a better "
                 "average best.pt)")
    console.echo(line)
    result = {"fold": fold, "epochs": epochs, "score": value, "valid_loss": valid_loss, "against": baseline,
              "better": better, "kept": kept, "path": str(fold_dir / AVERAGED)}
    _record(fold_dir, result)
    return result


def _describe_best(best: Mapping[str, Any], fold_dir: Path) -> str:
    """Who best.pt is, for the result line: "best epoch 7's", or an earlier average's, or SWA's."""
    if best.get("averaged"):
        return f"best.pt's (the average of epochs {', '.join(map(str, best['averaged']['epochs']))})"
    record = fold_dir / "fold.json"
    if record.is_file() and (json.loads(record.read_text(encoding="utf-8")).get("swa") or {}).get("kept"):
        return "best.pt's (the SWA of the last epochs)"
    return f"best epoch {best.get('best_epoch', best.get('epoch'))}'s"


def _number(value: Any) -> str:
    return (
        "none" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.5f}"
    )


def _keep_as_best(fold_dir: Path, checkpoint: dict[str, Any], valid: Any, valid_ids: list[str]) -> None:
    """The average becomes best.pt. The first time, best.pt and oof.npz as training left them are kept as
    best_epoch.pt and oof_epoch.npz. oof.npz is written before best.pt: a kill in between leaves best.pt
    the epoch's, which a rerun replaces again."""
    from compkit import engine

    for name, kept in (("best.pt", BEST_EPOCH), ("oof.npz", OOF_EPOCH)):
        if (fold_dir / name).is_file() and not (fold_dir / kept).exists():
            with _io.atomic_path(fold_dir / kept) as temporary:
                shutil.copyfile(fold_dir / name, temporary)
    engine._write_oof(fold_dir / "oof.npz", valid, valid_ids)
    _io.torch_save(checkpoint, fold_dir / "best.pt")


def _record(fold_dir: Path, result: dict[str, Any]) -> None:
    """Note the average in fold.json (a finished fold's record; best_score follows best.pt)."""
    path = fold_dir / "fold.json"
    if not path.is_file():
        return
    record = json.loads(path.read_text(encoding="utf-8"))
    record["average"] = {key: result[key] for key in ("epochs", "score", "valid_loss", "against", "kept")}
    if result["kept"]:
        record["best_score"] = result["score"]
    _io.write_text(path, json.dumps(record, indent=2, default=float) + "\n")
