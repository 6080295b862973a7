"""The seed's small-image ResNet-18: timm's ResNet-18 with a 3x3 stride-1 stem and no initial max-pool.

On 32x32 inputs the ImageNet stem (7x7 stride 2, then a stride-2 max-pool) would shrink the image to
8x8 before the first residual block; this one keeps 32x32 there and ends at 4x4 before pooling.
"""

from __future__ import annotations

from torch import nn

from compkit.builtins import timm_model
from compkit.errors import CompkitError


def resnet18_cifar(
    variant: str | None, num_classes: int, in_channels: int = 3, pretrained: bool = False
) -> nn.Module:
    """ResNet-18 for small images; input [B, in_channels, H, W], output logits [B, num_classes].

    ``pretrained`` loads timm's ImageNet weights for every layer except the new 3x3 stem, which
    starts from scratch (the 7x7 ImageNet filters do not fit it).
    """
    if variant:
        raise CompkitError(
            f"resnet18-cifar has no variants (got 'resnet18-cifar/{variant}'); "
            "for another network use a timm model, e.g. --model timm/resnet34"
        )
    model = timm_model("resnet18", num_classes, in_channels, pretrained)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
