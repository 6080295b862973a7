"""DenseCrossEntropy: cross entropy against soft (probability) targets, as the seed and the 1st place used it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseCrossEntropy(nn.Module):
    """``-(targets * log_softmax(logits)).sum(-1).mean()``.

    Shape: logits [B, C]; targets float [B, C], one-hot or soft (rows summing to 1), so the
    same loss trains on hard labels and on distilled out-of-fold soft labels.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probabilities = F.log_softmax(logits.float(), dim=-1)
        return -(targets.float() * log_probabilities).sum(-1).mean()
