"""Common losses on logits: cross entropy (hard or soft targets), BCE, Dice, BCE+Dice, focal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.CrossEntropyLoss):
    """Cross entropy; targets are int64 class indices (N,) or probabilities (N, C); for maps, logits
    (N, C, H, W) against int64 (N, H, W) class indices (``ignore_index`` pixels not scored)."""


class SmoothCrossEntropy(nn.CrossEntropyLoss):
    """Cross entropy with label smoothing 0.1, as in the CIFAR-10 speed records."""

    def __init__(self, smoothing: float = 0.1, weight: torch.Tensor | None = None, ignore_index: int = -100) -> None:
        super().__init__(weight=weight, label_smoothing=smoothing, ignore_index=ignore_index)


class BinaryCrossEntropy(nn.BCEWithLogitsLoss):
    """BCE on logits; targets float and the same shape as the logits."""


class DiceLoss(nn.Module):
    """1 - soft Dice over the whole batch, on sigmoid probabilities.

    Shape: logits and targets [B, 1, H, W] (any matching shape). Dice is undefined for an
    empty mask predicted empty (0/0); the smoothing term makes that case a loss near 0.
    Computing it over the batch rather than per image keeps empty images from dominating.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probabilities = torch.sigmoid(logits.float()).flatten()
        targets = targets.float().flatten()
        overlap = (probabilities * targets).sum()
        total = probabilities.sum() + targets.sum()
        return 1 - (2 * overlap + self.smooth) / (total + self.smooth)


class BCEDiceLoss(nn.Module):
    """BCE + Dice: BCE gives every pixel a gradient, Dice counters the background's majority."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.bce, self.dice = nn.BCEWithLogitsLoss(), DiceLoss()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        return self.bce_weight * self.bce(logits, targets) + self.dice_weight * self.dice(logits, targets)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_t) ** gamma.

    int64 targets (N,) use the softmax form over classes; float targets the same shape as the
    logits (multi-label, masks) use the sigmoid form per element.
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dtype == torch.int64:
            log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
            return (-((1 - log_p.exp()) ** self.gamma) * log_p).mean()
        targets = targets.float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
        p_t = torch.exp(-bce)
        return ((1 - p_t) ** self.gamma * bce).mean()


class DetectorLoss(nn.Module):
    """The sum of a torchvision detector's own losses (its train-mode output: a dict such as
    ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``); the targets were
    already consumed by the detector."""

    def forward(self, losses: dict[str, torch.Tensor], targets: object = None) -> torch.Tensor:
        if not isinstance(losses, dict):
            raise TypeError("the detector loss takes a detector's loss dict; use it with task detection")
        return torch.stack([value.float() for value in losses.values()]).sum()
