"""torchvision's detectors as the model family ``tv-det/<builder>``, and their anchors.

Any builder of ``torchvision.models.detection`` (``tv-det/fasterrcnn_resnet50_fpn_v2``,
``tv-det/retinanet_resnet50_fpn_v2``, ``tv-det/fcos_resnet50_fpn``, ``tv-det/ssdlite320_mobilenet_v3_large``
...), plus small ResNet-18/34 FPN variants for CPU runs (``tv-det/fasterrcnn_resnet18_fpn``,
``fcos_resnet34_fpn``, ``retinanet_resnet18_fpn``, and with a narrower FPN ``fcos_resnet18_fpn64``). Importing this loads no torch.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compkit.errors import CompkitError

SMALL_ARCHITECTURES = ("fasterrcnn", "fcos", "retinanet")
SMALL_BACKBONES = ("resnet18", "resnet34")
FPN_CHANNELS = 256
SMALL_CHANNELS = ("64", "128")  # narrower FPNs (and heads) for CPU runs
SCORE_THRESHOLD = 0.05  # keep weak boxes: the threshold is searched on the out-of-fold predictions
DETECTIONS_PER_IMAGE = 200  # a wheat image has up to ~120 heads; torchvision's default of 100 cuts them
EXCLUDED = ("keypointrcnn", "maskrcnn")  # need keypoint / mask targets


def names() -> list[str]:
    """Every variant ``tv-det/<name>`` accepts."""
    from torchvision import models
    from torchvision.models import detection

    built_in = [name for name in models.list_models(module=detection) if not name.startswith(EXCLUDED)]
    small = [f"{arch}_{body}_fpn{channels}" for arch in SMALL_ARCHITECTURES for body in SMALL_BACKBONES
             for channels in ("", *SMALL_CHANNELS)]
    return sorted(built_in + small)


def detector(variant: str | None, num_classes: int, in_channels: int = 3, pretrained: bool = False,
             image_size: tuple[int, int] | None = None) -> Any:
    """A torchvision detector for ``num_classes`` object classes (plus torchvision's background, class 0).

    It takes images as compkit's transforms give them (already normalised, so its own normalisation
    is the identity) and, with ``image_size`` (height, width), does not resize them either.
    ``pretrained``: ImageNet weights for the backbone (the detection heads start from scratch).
    """
    if in_channels != 3:
        raise CompkitError(f"tv-det/{variant}: torchvision's detectors take 3-channel images; in_channels is "
                           f"{in_channels}")
    known = names()
    if variant not in known:
        close = difflib.get_close_matches(variant or "", known, n=5)
        raise CompkitError(f"unknown detector tv-det/{variant}; available: {', '.join(known)}"
                           + (f" (close: {', '.join(close)})" if close else ""))
    options = _options(variant, num_classes + 1, image_size)
    if _is_small(variant):
        return _small(variant, options, pretrained)
    from torchvision.models import detection

    builder = getattr(detection, variant)
    if not pretrained:
        return builder(weights=None, weights_backbone=None, **options)
    weights = _weights_of(variant)
    with _weights_offline(weights, variant):
        return builder(weights=None, weights_backbone=weights, **options)


def _is_small(variant: str) -> bool:
    parts = variant.split("_")
    return len(parts) == 3 and parts[1] in SMALL_BACKBONES and parts[2].startswith("fpn")


def _options(variant: str, classes: int, image_size: tuple[int, int] | None) -> dict[str, Any]:
    """The builder's keyword arguments: classes, identity normalisation, no resize, thresholds."""
    options: dict[str, Any] = {"num_classes": classes, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}
    architecture = variant.split("_")[0]
    if architecture.startswith("ssd"):
        # SSD resizes to its own fixed size (320 or 300) and maps the boxes back
        return options | {"score_thresh": SCORE_THRESHOLD, "detections_per_img": DETECTIONS_PER_IMAGE}
    if image_size is not None:
        options |= {"min_size": min(image_size), "max_size": max(image_size)}
    if architecture == "fasterrcnn":
        return options | {"box_score_thresh": SCORE_THRESHOLD, "box_detections_per_img": DETECTIONS_PER_IMAGE}
    return options | {"score_thresh": SCORE_THRESHOLD, "detections_per_img": DETECTIONS_PER_IMAGE}


def _small(variant: str, options: dict[str, Any], pretrained: bool) -> Any:
    """``<arch>_<resnet18|34>_fpn[<channels>]``: torchvision's head on a small ResNet with an FPN of 256
    channels (or ``channels``: ``fcos_resnet18_fpn64`` is about 3x faster to train on a CPU)."""
    from torchvision.models import detection, resnet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import misc
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    architecture, body, fpn = variant.split("_")
    channels = int(fpn[3:] or FPN_CHANNELS)
    weights = _weights_of(variant) if pretrained else None
    with _weights_offline(weights, variant) if weights is not None else contextlib.nullcontext():
        # ImageNet statistics stay frozen in a pretrained body, as torchvision's detectors keep them
        network = getattr(resnet, body)(weights=weights, **({"norm_layer": misc.FrozenBatchNorm2d} if weights else {}))
    if weights is not None:  # torchvision's default: train layer2-4, keep the stem and layer1 as trained
        for name, parameter in network.named_parameters():
            parameter.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
    widths = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    if architecture == "fasterrcnn":  # P2-P5 and a pooled P6, as fasterrcnn_resnet50_fpn
        layers, extra = ["layer1", "layer2", "layer3", "layer4"], LastLevelMaxPool()
    else:  # RetinaNet and FCOS take P3-P7, as their ResNet-50 builders do
        layers, extra = ["layer2", "layer3", "layer4"], LastLevelP6P7(channels, channels)
    backbone = BackboneWithFPN(network, {layer: str(index) for index, layer in enumerate(layers)},
                               [widths[layer] for layer in layers], channels, extra_blocks=extra)
    if architecture == "retinanet":
        from torchvision.models.detection.retinanet import _default_anchorgen

        options["anchor_generator"] = _default_anchorgen()
    model = {"fasterrcnn": detection.FasterRCNN, "fcos": detection.FCOS, "retinanet": detection.RetinaNet}
    return model[architecture](backbone, **options)


def _weights_of(variant: str) -> Any:
    """The ImageNet weights (a torchvision enum member) of ``tv-det/<variant>``'s backbone."""
    if _is_small(variant):
        from torchvision.models import resnet

        return resnet.__dict__[f"ResNet{variant.split('_')[1][6:]}_Weights"].IMAGENET1K_V1
    from torchvision.models import detection

    return _backbone_weights(getattr(detection, variant))


def _file_name(weights: Any) -> str:
    """torchvision's file name for ``weights`` (what its hub cache and COMPKIT_WEIGHTS_DIR hold)."""
    return Path(urllib.parse.urlparse(weights.url).path).name


def _backbone_weights(builder: Any) -> Any:
    """The ImageNet weights enum member a builder's ``weights_backbone`` takes by default."""
    import inspect
    import typing

    annotation = inspect.signature(builder).parameters["weights_backbone"].annotation
    if isinstance(annotation, str):
        annotation = typing.get_type_hints(builder)["weights_backbone"]
    enum = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return enum.DEFAULT


@contextlib.contextmanager
def _weights_offline(weights: Any, variant: str) -> Iterator[None]:
    """Load ``weights`` from COMPKIT_WEIGHTS_DIR when it holds their file (torchvision's own name, e.g.
    resnet50-11ad3fa6.pth), else through torchvision's cache and download; a failure says what to do."""
    file_name = _file_name(weights)
    folder = os.environ.get("COMPKIT_WEIGHTS_DIR")
    local = Path(folder) / file_name if folder else None
    try:
        if local is not None and local.is_file():
            with tempfile.TemporaryDirectory() as home:  # torch.hub finds the file in its cache: no download
                (Path(home) / "hub" / "checkpoints").mkdir(parents=True)
                (Path(home) / "hub" / "checkpoints" / file_name).symlink_to(local.resolve())
                with _torch_home(home):
                    yield
        else:
            yield
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        raise CompkitError(
            f"could not load ImageNet backbone weights for tv-det/{variant} ({error}); no internet here? Put "
            f"{file_name} (from {weights.url}, or compkit weights pull tv-det/{variant}) in COMPKIT_WEIGHTS_DIR, "
            "or train from scratch with --set pretrained=false") from None


@contextlib.contextmanager
def _torch_home(home: str) -> Iterator[None]:
    before = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = home
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = before


def pull(variant: str, folder: Path) -> Path:
    """Fetch the backbone weights ``tv-det/<variant>`` uses into ``folder`` (for COMPKIT_WEIGHTS_DIR)."""
    import shutil

    import torch

    weights = _weights_of(variant)
    weights.get_state_dict(progress=True)  # into torch.hub's cache
    file_name = _file_name(weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    target = folder / file_name
    shutil.copyfile(cached, target)
    return target


def anchor_generator(model: Any) -> Any:
    """The anchor generator of a torchvision detector (``AnchorGenerator``; SSD's ``DefaultBoxGenerator``),
    or None for an anchor-free one (FCOS keeps one anchor per location, its grid points)."""
    rpn = getattr(model, "rpn", None)
    return rpn.anchor_generator if rpn is not None else getattr(model, "anchor_generator", None)


def anchors(model: Any, image_size: tuple[int, int]) -> list[Any]:
    """The anchors of ``model`` for one image of ``image_size`` (height, width), per feature level:
    a list of float32 [H_l * W_l * A, 4] xyxy tensors in input pixels (A: sizes x aspect ratios per location).

    d2l's first anchor exercise, on the model that trains: ``print([a.shape for a in anchors(model, (512, 512))])``.
    """
    import torch
    from torchvision.models.detection.image_list import ImageList

    generator = anchor_generator(model)
    if generator is None:
        raise CompkitError(f"{type(model).__name__} has no anchor generator")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image = torch.zeros(1, 3, *image_size)
            features = model.backbone(image)
            features = list(features.values()) if isinstance(features, dict) else list(features)
            generated = generator(ImageList(image, [tuple(image_size)]), features)[0]
    finally:
        model.train(was_training)
    counts = [int(feature.shape[-2] * feature.shape[-1]) * _per_location(generator, level)
              for level, feature in enumerate(features)]
    return list(torch.split(generated, counts))


def _per_location(generator: Any, level: int) -> int:
    counts = generator.num_anchors_per_location()
    return int(counts[level])
