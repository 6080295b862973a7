"""Small images held on the device as uint8, augmented there in whole batches (config ``gpu_data``).

For CIFAR-sized data the DataLoader's per-sample Python work, not the GPU, is the bottleneck; the
CIFAR speed records keep the whole training set on the GPU and crop/flip batches there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from compkit import _distributed
from compkit.config import height_width
from compkit.engine import EpochSampler, derive_seed


class DeviceLoader:
    """Batches ``{"image": float32 [B, C, H, W], "target": ...}`` cut from a uint8 tensor on ``device``.

    Training batches get a random translation of up to ``pad`` pixels (zero padding, as in random
    crop with padding) and a random horizontal flip, drawn from (seed, epoch) so runs repeat. It
    stands in for the Engine's DataLoader: ``len()``, iteration, and ``sampler.set_epoch``. ``size``: the
    side, or (H, W), batches are resized to when the images have another (None: as they are).
    """

    def __init__(self, images: np.ndarray, targets: Sequence | np.ndarray, *, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device | str,
                 size: int | Sequence[int] | None = None,
                 train: bool = True, seed: int = 0, pad: int = 4, flip: bool = True,
                 weights: np.ndarray | None = None) -> None:
        array = np.ascontiguousarray(images)
        if array.ndim == 3:
            array = array[..., None]
        self.device = torch.device(device)
        # (N, H, W, C) uint8 -> (N, C, H, W) uint8 on the device: 4x smaller than float32
        self.images = torch.from_numpy(array).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.targets = torch.as_tensor(np.asarray(targets)).to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.batch_size, self.train, self.seed, self.pad, self.flip = batch_size, train, seed, pad, flip
        self.size = None if size is None else height_width(size)
        self.dataset = self.images  # what the Engine reports sizes from
        self.sampler = EpochSampler(len(self.images), shuffle=train, seed=seed, rank=_distributed.rank(),
                                    world_size=_distributed.world_size(), weights=weights)

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.train else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.as_tensor(self.sampler.indices(), device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, self.sampler.epoch, 7))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index]
            if self.train:
                images = augment(images, self.pad, self.flip, generator)
            yield {"image": self._normalise(images), "target": self.targets[index]}

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        images = (images.float() - self.mean) / self.std
        if self.size and tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        return images


def augment(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random translate-with-zero-padding by up to ``pad`` px and random hflip, per image.

    Shape: uint8 [B, C, H, W] -> uint8 [B, C, H, W]; one gather, no per-image Python loop.
    """
    batch, _, height, width = images.shape
    device = images.device
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]  # [B, 1, H, 1]
        cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]  # [B, 1, 1, W]
        samples = torch.arange(batch, device=device)[:, None, None, None]
        channels = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[samples, channels, rows, cols]
    if flip:
        flipped = torch.rand(batch, device=device, generator=generator) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    return images
