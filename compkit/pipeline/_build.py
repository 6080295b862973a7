"""What a verb builds from a competition and its config: the model, loaders, the Engine and the batch transform.

Training, averaging, prediction and the plugin contract tests all build their model here, so a model is
made one way everywhere.
"""

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


def build_model(comp: Competition, config: Config, pretrained: bool) -> Any:
    """The config's registered model with the competition's outputs and input channels (a torch Module)."""
    return registry.get().model(config.model, comp.num_classes, comp.in_channels, pretrained=pretrained,
                                image_size=config.size)


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
