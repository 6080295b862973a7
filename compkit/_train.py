"""Wire a competition into the Engine for one fold: datasets, loaders, model, loss, optimizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compkit import engine, optim, registry
from compkit.competition import Competition
from compkit.config import Config
from compkit.errors import CompkitError


def fit_fold(comp: Competition, config: Config, table: pd.DataFrame, valid_mask: np.ndarray, root: Path,
             out_dir: Path, *, resume: bool, quiet: bool, fold: int,
             on_start: Callable[[], None] | None = None, after_epoch: Callable[[int], None] | None = None,
             init_from: Path | None = None, limit_batches: int | None = None,
             oof_targets: np.ndarray | None = None,
             pseudo_rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Train on the rows outside ``valid_mask``, validate on the rest; files go to ``out_dir``.

    ``on_start()`` runs once the model and data are ready, before the first epoch; ``after_epoch(epoch)``
    once each epoch's checkpoint is written. ``init_from``: a best.pt whose weights the model starts from.
    ``limit_batches``: train and validate on only that many batches' worth of rows (a dry run).
    ``oof_targets`` (len(table), C): another run's out-of-fold probabilities, mixed into the training rows'
    targets (config ``soft_targets``); ``pseudo_rows``: extra training rows, never validated on (``pseudo``).
    See ``compkit._pseudo``.
    """
    import torch

    torch.manual_seed(config.seed)  # the same initial weights for every fold and every rerun
    train_table = table[~valid_mask].reset_index(drop=True)
    valid_table = table[valid_mask].reset_index(drop=True)
    oof_rows = None if oof_targets is None else oof_targets[~valid_mask]
    if limit_batches:
        rows = limit_batches * config.batch_size * config.accumulate
        extra = 0 if pseudo_rows is None else min(len(pseudo_rows), rows // 2)  # a dry run sees both kinds
        train_table = train_table.head(rows - extra)
        valid_table = valid_table.head(limit_batches * config.batch_size)
        oof_rows = None if oof_rows is None else oof_rows[:rows - extra]
        pseudo_rows = None if pseudo_rows is None else pseudo_rows.head(extra)
    if pseudo_rows is not None and len(pseudo_rows):
        if oof_rows is not None:  # pseudo rows keep their hard label
            unknown = np.full((len(pseudo_rows), oof_rows.shape[1]), np.nan, dtype=np.float32)
            oof_rows = np.concatenate([oof_rows, unknown])
        train_table = pd.concat([train_table, pseudo_rows], ignore_index=True)
    reg = registry.get()
    model = reg.model(config.model, comp.num_classes, comp.in_channels, config.pretrained)
    dataset, sample_weights, class_weights = training_set(comp, config, train_table, root, oof_rows)
    train_loader = loader(comp, train_table, root, "train", config, dataset=dataset, weights=sample_weights)
    valid_loader = loader(comp, valid_table, root, "valid", config) if len(valid_table) else None  # None: full fit
    optimizer = optim.build_optimizer(model, config)
    steps = optim.optimizer_steps_per_epoch(len(train_loader), config.accumulate)
    schedule = optim.build_scheduler(optimizer, config, steps, higher_is_better=comp.higher_is_better)

    def epoch_ended(epoch: int, metrics: dict[str, Any]) -> None:
        if after_epoch is not None:
            after_epoch(epoch)
        notify(comp, fold, epoch, metrics)

    loss = reg.loss(config.loss, config=config, competition=comp,
                    class_weights=None if class_weights is None else torch.from_numpy(class_weights))
    if class_weights is not None and isinstance(loss, torch.nn.Module):
        loss = loss.to(engine.resolve_device(config.device))  # the weights live beside the logits
    with make_engine(comp, config, model, loss, optimizer, schedule, quiet=quiet) as trainer:
        if init_from is not None and not (resume and (out_dir / "last.pt").is_file()):
            try:
                trainer.load(init_from)
            except RuntimeError as error:  # load_state_dict: missing, unexpected or mis-shaped weights
                raise CompkitError(f"the weights in {init_from} do not fit {config.model} with {comp.num_classes} "
                                   f"outputs (another model?): {str(error).splitlines()[0]}") from None
        if on_start is not None:
            on_start()
        with FitHooks(comp, fold, out_dir, config.to_dict()) as hooks:  # on_fit_start, then on_fit_end
            hooks.result = trainer.fit(
                train_loader, valid_loader, epochs=config.epochs, score=comp.score, metric=comp.metric,
                higher_is_better=comp.higher_is_better, out_dir=out_dir, patience=config.patience, resume=resume,
                config=config.to_dict(), valid_ids=valid_table[comp.id_column].astype(str).tolist() or None,
                on_epoch_end=epoch_ended,
            )
        return hooks.result


def training_set(comp: Competition, config: Config, table: pd.DataFrame, root: Path,
                 oof_rows: np.ndarray | None) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """(the training dataset of ``table``, the sampler's weight per row or None, the loss's class weights or
    None): soft targets mixed in when ``oof_rows`` is given, class balance as the config asks
    (``compkit.balance``), both from the rows' hard labels."""
    from compkit import _pseudo, balance

    dataset = comp.dataset(table, root, "train", config)
    if oof_rows is None and config.class_weights == "none" and config.sampler == "uniform":
        return dataset, None, None
    hard = balance.hard_targets(comp, table, dataset)
    sample_weights = class_weights = None
    if config.class_weights != "none" or config.sampler != "uniform":
        labels = balance.class_labels(comp, hard)
        class_weights = balance.class_weights(comp, labels) if config.class_weights == "balanced" else None
        sample_weights = balance.sample_weights(comp, labels) if config.sampler == "balanced" else None
        sampled = "; the sampler draws each class about equally often" if sample_weights is not None else ""
        _pseudo.echo(f"training rows per class: {balance.describe(comp, labels, class_weights)}{sampled}")
    if oof_rows is not None:
        soft = _pseudo.soft_targets(comp, hard, oof_rows, config.soft_weight)
        dataset = _pseudo.with_targets(dataset, soft)
    return dataset, sample_weights, class_weights


def loader(comp: Competition, table: pd.DataFrame, root: Path, stage: str, config: Config, **options: Any) -> Any:
    """A DataLoader over ``comp.dataset`` for ``stage``, seeded and sized from the config.

    Options: ``dataset`` (one already built from ``table``), ``weights`` (training: the sampler's weight
    per row, see ``EpochSampler``), ``device``, ``batch_size``."""
    dataset = options.get("dataset")
    if dataset is None:
        dataset = comp.dataset(table, root, stage, config)
    if stage == "train" and config.augment != "none":
        if not hasattr(dataset, "transform"):
            raise CompkitError(f"augment={config.augment} needs a dataset with a ``transform`` to extend; "
                               f"{comp.name}'s {type(dataset).__name__} has none: set augment = none")
        dataset.transform = with_policy(dataset.transform, config)
    device = options.get("device") or config.device
    if config.gpu_data and stage == "train":
        return device_loader(comp, dataset, config, device, options.get("weights"))
    return engine.make_loader(dataset, batch_size=options.get("batch_size") or config.batch_size,
                              train=stage == "train", num_workers=config.num_workers, seed=config.seed,
                              device=device, weights=options.get("weights"), drop_last=config.drop_last)


def with_policy(transform: Any, config: Config) -> Any:
    """``transform`` after torchvision's RandAugment, TrivialAugmentWide or AutoAugment on the uint8 image."""
    import albumentations as A
    import numpy as np
    import torch
    from torchvision.transforms import v2

    policy = {"randaugment": lambda: v2.RandAugment(num_ops=2, magnitude=config.augment_magnitude),
              "trivialaugment": v2.TrivialAugmentWide, "autoaugment": v2.AutoAugment}[config.augment]()

    def apply(image: np.ndarray, **_: Any) -> np.ndarray:
        if image.dtype != np.uint8:
            raise CompkitError(f"augment={config.augment} works on uint8 images; this dataset gives {image.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        channels_first = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        out = policy(channels_first)
        return out[0].numpy() if image.ndim == 2 else out.permute(1, 2, 0).numpy()

    steps = [A.Lambda(image=apply, name=config.augment)] + ([transform] if transform is not None else [])
    return A.Compose(steps)


def device_loader(comp: Competition, dataset: Any, config: Config, device: str,
                  weights: np.ndarray | None = None) -> Any:
    """The training set on the device as uint8, cropped and flipped there (``gpu_data``).

    It replaces the competition's train transforms with the small-image recipe: random crop
    with 4 px padding and a horizontal flip.
    """
    from compkit.datasets import ArrayDataset
    from compkit.gpu_data import DeviceLoader

    if not isinstance(dataset, ArrayDataset) or dataset.targets is None:
        raise CompkitError(f"gpu_data needs the images in memory (an ArrayDataset); {comp.name}'s training "
                           f"dataset is a {type(dataset).__name__}: use --set gpu_data=false")
    return DeviceLoader(dataset.selected_images(), dataset.targets, batch_size=config.batch_size, mean=comp.mean,
                        std=comp.std, device=engine.resolve_device(device), size=config.size,
                        seed=config.seed, weights=weights)


def make_engine(comp: Competition, config: Config, model: Any, loss: Any = None, optimizer: Any = None,
                schedule: Any = None, *, quiet: bool = False, device: str | None = None) -> engine.Engine:
    """An Engine with the config's precision, layout and EMA settings."""
    return engine.Engine(
        model, loss, optimizer, schedule, task=comp.kind, device=device or config.device,
        amp=config.amp, channels_last=config.channels_last, compile=config.compile,
        accumulate=config.accumulate, clip_grad=config.clip_grad, ema=config.ema,
        precise_bn=config.precise_bn, seed=config.seed, quiet=quiet,
        batch_transform=mixing(comp, config) if optimizer is not None else None,
        frozen=body_parameters(model) if config.freeze_epochs else (), freeze_epochs=config.freeze_epochs,
        select=config.checkpoint, swa=config.swa if optimizer is not None else 0,
        keep_top=config.keep_top if optimizer is not None else 0,
    )


def body_parameters(model: Any) -> list[Any]:
    """Every parameter outside the classifier head (``optim.head_parameters``)."""
    head = {id(parameter) for parameter in optim.head_parameters(model)}
    if not head:
        raise CompkitError(f"freeze_epochs needs a model with a head to keep training; {type(model).__name__} has "
                           "none (no get_classifier(), segmentation_head or nn.Linear): set freeze_epochs = 0")
    return [parameter for parameter in model.parameters() if id(parameter) not in head]


def mixing(comp: Competition, config: Config) -> Callable[[Any, Any, int], tuple[Any, Any]] | None:
    """Mixup / cutmix (timm's ``Mixup``) as the Engine's batch transform, or None when both are off.

    Targets become mixed one-hot probabilities. timm mixes pairs, so an odd batch mixes all but its
    last sample, which keeps its one-hot target. The last ``mix_off_epoch`` epochs are not mixed.
    """
    if not (config.mixup or config.cutmix):
        return None
    if not comp.kind.one_label:
        raise CompkitError(f"mixup and cutmix are for classification; {comp.name} is {comp.kind.name}: set both to 0")
    import torch
    from timm.data import Mixup

    # multi_label: timm then mixes dense targets as they are, so soft targets (plant pathology) mix too
    mix = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mix_prob,
                label_smoothing=0.0, num_classes=comp.num_classes, multi_label=True)
    last_mixed = config.epochs - config.mix_off_epoch

    def transform(images: Any, targets: Any, epoch: int) -> tuple[Any, Any]:
        if epoch > last_mixed:
            return images, targets
        soft = targets.float() if targets.ndim > 1 else torch.nn.functional.one_hot(targets, comp.num_classes).float()
        even = len(images) - len(images) % 2
        if even:
            images, soft = images.clone(), soft.clone()
            images[:even], soft[:even] = mix(images[:even], soft[:even])
        return images, soft

    return transform


def notify(comp: Competition, fold: int, epoch: int, metrics: dict[str, float], run_dir: Path | None = None,
           config: dict[str, Any] | None = None) -> None:
    """Call every plugin's on_epoch_end; a failing logger is reported, training goes on.

    ``run_dir`` and ``config`` default to those of the fit in progress (``FitHooks``).
    """
    if _FITTING:
        run_dir = _FITTING[-1].run_dir if run_dir is None else run_dir
        config = _FITTING[-1].config if config is None else config
    call_hooks("on_epoch_end", competition=comp, fold=fold, epoch=epoch, metrics=dict(metrics), run_dir=run_dir,
               config=dict(config or {}))


def call_hooks(hook: str, **arguments: Any) -> None:
    """Call every plugin's ``hook`` on rank 0 only; a failing one is warned about, training goes on."""
    from compkit import _distributed

    if not _distributed.is_main():
        return
    manager = registry.get().manager
    for impl in manager.implementations(hook):
        if not manager.run(impl, **arguments):
            manager.warn_failed()


_FITTING: list[FitHooks] = []  # the fits in progress, innermost last: notify() gets run_dir and config here


class FitHooks:
    """``with FitHooks(...) as hooks: hooks.result = fit(...)``: the plugins' on_fit_start before the block,
    their on_fit_end after it, also when it raises (Ctrl-C included), with ``result`` None and the error."""

    def __init__(self, comp: Competition, fold: int, run_dir: Path, config: dict[str, Any]) -> None:
        self.comp, self.fold, self.run_dir, self.config = comp, fold, run_dir, config
        self.result: dict[str, Any] | None = None

    def __enter__(self) -> FitHooks:
        _FITTING.append(self)
        try:
            call_hooks("on_fit_start", competition=self.comp, fold=self.fold, run_dir=self.run_dir,
                       config=dict(self.config))
        except BaseException as error:  # a real Ctrl-C inside a hook: the loggers already opened close again
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        try:
            call_hooks("on_fit_end", competition=self.comp, fold=self.fold, run_dir=self.run_dir,
                       result=None if error is not None else self.result, error=error)
        finally:
            _FITTING.remove(self)
