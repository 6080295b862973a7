"""d2l's fully convolutional network (13.11): a CNN body at stride 32 without its pooling and classifier,
a 1x1 convolution to the classes, and a transposed convolution initialised as bilinear upsampling that
brings the class maps back to the input's size."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from compkit.errors import CompkitError

KERNEL, STRIDE, PADDING = 64, 32, 16  # d2l's: output side = 32 x input side / 32


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """float32 [in_channels, out_channels, k, k]: the ConvTranspose2d weight that upsamples each channel onto
    itself bilinearly (d2l's ``bilinear_kernel``; zero between different channels).

    With stride k / 2 and padding k / 4 it equals ``F.interpolate(mode="bilinear", align_corners=False)``
    at scale k / 2, except within k / 4 pixels of the border, where fewer inputs reach an output.
    """
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    steps = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (steps - centre).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    diagonal = torch.arange(min(in_channels, out_channels))
    weight[diagonal, diagonal] = profile[:, None] * profile[None, :]
    return weight


class FCN(nn.Module):
    """``body.forward_features`` (stride 32) -> 1x1 conv to ``num_classes`` -> bilinear transposed conv.

    Shape: images [B, C, H, W] -> logits [B, num_classes, H, W]. For sides that are multiples of 32 the
    upsampled map is the input's size; otherwise it is the next multiple of 32 and is cut back to
    ``H x W`` (top-left, where the two are aligned).
    """

    def __init__(self, body: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        # named as smp's head, so head_lr_multiplier and freeze_epochs find it; d2l's names inside
        self.segmentation_head = nn.Sequential(OrderedDict(
            final_conv=nn.Conv2d(channels, num_classes, kernel_size=1),
            transpose_conv=nn.ConvTranspose2d(num_classes, num_classes, KERNEL, stride=STRIDE, padding=PADDING),
        ))
        upsample = self.segmentation_head.transpose_conv
        with torch.no_grad():
            upsample.weight.copy_(bilinear_kernel(num_classes, num_classes, KERNEL))
            upsample.bias.zero_()  # exactly bilinear at the start (d2l leaves torch's random bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.segmentation_head(self.body.forward_features(images))
        return logits[..., :images.shape[-2], :images.shape[-1]]


def build(variant: str, num_classes: int, in_channels: int = 3, pretrained: bool = False) -> FCN:
    """An FCN on the timm model ``variant`` (``resnet18``: d2l's), ImageNet weights when ``pretrained``
    (loaded as ``timm/<variant>`` is: ``COMPKIT_WEIGHTS_DIR`` offline, else the hub)."""
    from compkit.builtins import timm_model

    body = timm_model(variant, num_classes=0, in_channels=in_channels, pretrained=pretrained)
    reduction = body.feature_info[-1]["reduction"] if getattr(body, "feature_info", None) else None
    if reduction != STRIDE:
        raise CompkitError(f"fcn/{variant}: the FCN needs a body whose last features are at stride {STRIDE} "
                           f"(a ResNet, an EfficientNet ...); {variant} gives {reduction}")
    return FCN(body, body.num_features, num_classes)
