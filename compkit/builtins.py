"""The core's own plugin: generic model families (timm/..., unet/... and other smp architectures, tv-det/...
detectors) and common losses.

Factories import torch, timm and segmentation-models-pytorch only when called.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compkit.errors import CompkitError
from compkit.hookspecs import hookimpl

# family name -> segmentation_models_pytorch architecture
SMP_ARCHITECTURES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "linknet": "Linknet",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "manet": "MAnet",
    "pan": "PAN",
}
SMP_PREFIX = "smp-"  # COMPKIT_WEIGHTS_DIR/smp-<encoder>.safetensors: an smp encoder's ImageNet weights
WEIGHTS_HELP = (
    "no internet here? Set COMPKIT_WEIGHTS_DIR to a folder holding {name}.safetensors (or .pth), "
    "e.g. a Kaggle dataset of weights made where there is internet with compkit weights pull MODEL, "
    "or train from scratch with --set pretrained=false"
)


def _local_weights(name: str) -> Path | None:
    """A weights file for ``name`` in COMPKIT_WEIGHTS_DIR, for offline machines (Kaggle kernels)."""
    folder = os.environ.get("COMPKIT_WEIGHTS_DIR")
    for suffix in (".safetensors", ".pth", ".bin"):
        if folder and (Path(folder) / f"{name}{suffix}").is_file():
            return Path(folder) / f"{name}{suffix}"
    return None


def _read_weights(path: Path) -> dict[str, Any]:
    """A state dict from a .safetensors file, or a .pth/.bin loaded with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def pull_weights(model: str, folder: Path) -> Path:
    """Fetch the ImageNet weights ``model`` needs (timm/VARIANT, or an smp family/ENCODER) into ``folder``,
    where ``COMPKIT_WEIGHTS_DIR`` finds them offline; returns the file written."""
    from safetensors.torch import save_file

    from compkit import _io

    family, _, variant = model.partition("/")
    if family == "timm":
        import timm

        state, name = timm.create_model(variant, pretrained=True).state_dict(), variant
    elif family in SMP_ARCHITECTURES:
        import segmentation_models_pytorch as smp

        encoder = variant or "resnet34"
        state = smp.encoders.get_encoder(encoder, weights="imagenet").state_dict()
        name = f"{SMP_PREFIX}{encoder}"
    elif family == "tv-det":
        from compkit import detectors

        return detectors.pull(variant, folder)  # torchvision's own file, under its own name
    else:
        raise CompkitError(f"{model}: weights pull knows timm/VARIANT, tv-det/DETECTOR and "
                           f"{', '.join(SMP_ARCHITECTURES)}/ENCODER")
    target = folder / f"{name}.safetensors"
    with _io.atomic_path(target) as temporary:
        save_file({key: value.contiguous() for key, value in state.items()}, str(temporary))
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the Hugging Face hub? (Behind a proxy: assume yes.)"""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _offline_unless_reachable() -> Iterator[None]:
    """Use only cached weights when the hub cannot be reached.

    Otherwise huggingface_hub retries every weight file for about a minute before failing.
    """
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or _hub_reachable():
        yield
        return
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def timm_model(variant: str | None, num_classes: int, in_channels: int = 3, pretrained: bool = False) -> Any:
    """Any timm model by name: ``timm/resnet18``, ``timm/efficientnet_b0`` ..."""
    import timm

    if not variant or not timm.is_model(variant):
        close = difflib.get_close_matches(variant or "", timm.list_models(), n=5)
        raise CompkitError(f"unknown timm model {variant!r}; close matches: {', '.join(close) or 'none'} "
                           "(list them with: python -c \"import timm; print(timm.list_models('*resnet*'))\")")
    options: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_channels, "pretrained": pretrained}
    local = _local_weights(variant) if pretrained else None
    if local is not None:
        options["pretrained_cfg_overlay"] = {"file": str(local)}
    try:
        with _offline_unless_reachable() if pretrained and local is None else contextlib.nullcontext():
            return timm.create_model(variant, **options)
    except Exception as error:
        if not pretrained:
            raise
        raise CompkitError(f"could not load pretrained weights for timm/{variant}: {error}; "
                           + WEIGHTS_HELP.format(name=variant)) from None


def smp_family(architecture: str) -> Callable[..., Any]:
    """A factory for one segmentation-models-pytorch architecture; the variant is the encoder."""

    def factory(variant: str | None, num_classes: int, in_channels: int = 3, pretrained: bool = False) -> Any:
        import segmentation_models_pytorch as smp

        encoder = variant or "resnet34"
        if encoder not in smp.encoders.get_encoder_names():
            close = difflib.get_close_matches(encoder, smp.encoders.get_encoder_names(), n=5)
            raise CompkitError(f"unknown encoder {encoder!r} for {architecture}; close matches: {', '.join(close)}")
        local = _local_weights(f"{SMP_PREFIX}{encoder}") if pretrained else None
        if local is not None:  # offline: the encoder's ImageNet weights from COMPKIT_WEIGHTS_DIR
            model = smp.create_model(architecture, encoder_name=encoder, in_channels=3, classes=num_classes,
                                     encoder_weights=None)
            model.encoder.load_state_dict(_read_weights(local))
            if in_channels != 3:
                model.encoder.set_in_channels(in_channels, pretrained=True)  # smp's own first-conv adaptation
            return model
        try:
            with _offline_unless_reachable() if pretrained else contextlib.nullcontext():
                return smp.create_model(architecture, encoder_name=encoder, in_channels=in_channels,
                                        classes=num_classes, encoder_weights="imagenet" if pretrained else None)
        except Exception as error:
            if not pretrained:
                raise
            raise CompkitError(f"could not load ImageNet weights for encoder {encoder}: {error}; "
                               + WEIGHTS_HELP.format(name=f"{SMP_PREFIX}{encoder}")) from None

    factory.__doc__ = f"segmentation_models_pytorch {architecture} with any smp encoder."
    return factory


def _detector(variant: str | None, num_classes: int, in_channels: int = 3, pretrained: bool = False,
              image_size: tuple[int, int] | None = None) -> Any:
    """torchvision's detectors: ``tv-det/fasterrcnn_resnet50_fpn_v2``, ``tv-det/fcos_resnet18_fpn`` ...
    (``compkit.detectors``)."""
    from compkit import detectors

    return detectors.detector(variant, num_classes, in_channels, pretrained, image_size)


def _loss(name: str) -> Callable[..., Any]:
    def factory() -> Any:
        from compkit import losses

        return getattr(losses, name)()

    def weighted(class_weights: Any = None, competition: Any = None) -> Any:
        """``class_weights`` (config class_weights = balanced): CE's per-class ``weight``; for BCE the
        ``pos_weight`` of each class on a multi-label task, else a per-class ``weight``. Cross entropy on a
        task with an ignore index (multi-class segmentation) does not score those pixels."""
        from compkit import losses, tasks

        task = tasks.of(competition) if competition is not None else None
        options = {}
        ignore = task.ignored(competition) if task is not None else None
        if ignore is not None and name in IGNORING_LOSSES:
            options["ignore_index"] = ignore
        if class_weights is None:
            return getattr(losses, name)(**options)
        if name == "BinaryCrossEntropy" and task is not None and task.several_labels:
            return losses.BinaryCrossEntropy(pos_weight=class_weights)
        return getattr(losses, name)(weight=class_weights, **options)

    def dice(competition: Any = None) -> Any:
        """Binary soft Dice (``compkit.losses.DiceLoss``), or smp's multi-class Dice (ignore index honoured)
        when the competition's task is multi-class segmentation."""
        from compkit import losses, tasks

        task = tasks.of(competition) if competition is not None else None
        if task is not None and task.dice_mode == "multiclass":
            from segmentation_models_pytorch.losses import DiceLoss

            return DiceLoss("multiclass", ignore_index=task.ignored(competition))
        return losses.DiceLoss()

    if name == "DiceLoss":
        return dice
    return weighted if name in WEIGHTED_LOSSES else factory


LOSSES = {
    "ce": "CrossEntropy",
    "ce-smooth": "SmoothCrossEntropy",
    "bce": "BinaryCrossEntropy",
    "dice": "DiceLoss",
    "bce-dice": "BCEDiceLoss",
    "focal": "FocalLoss",
    "detector": "DetectorLoss",  # task detection: the detector's own losses, summed
}
WEIGHTED_LOSSES = ("CrossEntropy", "SmoothCrossEntropy", "BinaryCrossEntropy")  # take class_weights
IGNORING_LOSSES = ("CrossEntropy", "SmoothCrossEntropy")  # take an ignore_index


@hookimpl
def register_tasks(register: Callable[[Any], None]) -> None:
    from compkit import tasks

    for task in tasks.BUILTIN:
        register(task)


@hookimpl
def register_models(register: Callable[[str, Callable[..., Any]], None]) -> None:
    register("timm", timm_model)
    for family, architecture in SMP_ARCHITECTURES.items():
        register(family, smp_family(architecture))
    register("tv-det", _detector)


@hookimpl
def register_losses(register: Callable[[str, Callable[[], Any]], None]) -> None:
    for name, class_name in LOSSES.items():
        register(name, _loss(class_name))


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")  # the functions of those names in compkit.optim


def _optimizer(name: str) -> Callable[..., Any]:
    def factory(groups: list[dict[str, Any]], config: Any) -> Any:
        from compkit import optim

        return getattr(optim, name)(groups, config)

    return factory


@hookimpl
def register_optimizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    for name in OPTIMIZERS:
        register(name, _optimizer(name))
