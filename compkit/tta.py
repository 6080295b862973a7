"""Test-time augmentation: each view is a (forward, inverse) pair; predictions merge as probabilities.

A dense output (a map over the image) is mapped back through its own view's inverse right after
that view's forward pass, so every averaged map is in the original orientation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from compkit.errors import CompkitError

BATCH_PIXELS = 32 * 512 * 512  # at most this many input pixels (per channel) in one batched TTA call


@dataclass(frozen=True)
class View:
    """One test-time view: ``forward`` and ``inverse`` map ``[B, C, H, W]`` to ``[B, C, H', W']``."""

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    square_only: bool = False  # swaps H and W, so non-square images cannot be averaged


def _identity(images: Tensor) -> Tensor:
    return images


def _hflip(images: Tensor) -> Tensor:
    return images.flip(-1)


def _vflip(images: Tensor) -> Tensor:
    return images.flip(-2)


def _rot90(images: Tensor) -> Tensor:
    return images.rot90(1, dims=(-2, -1))


def _rot180(images: Tensor) -> Tensor:
    return images.flip(-2, -1)


def _rot270(images: Tensor) -> Tensor:
    return images.rot90(-1, dims=(-2, -1))


def _transpose(images: Tensor) -> Tensor:
    return images.transpose(-2, -1)


def _antitranspose(images: Tensor) -> Tensor:
    return images.flip(-2, -1).transpose(-2, -1)


IDENTITY = View("identity", _identity, _identity)
HFLIP = View("hflip", _hflip, _hflip)
VFLIP = View("vflip", _vflip, _vflip)
ROT180 = View("rot180", _rot180, _rot180)  # both flips
D4 = (
    IDENTITY,
    View("rot90", _rot90, _rot270, square_only=True),
    ROT180,
    View("rot270", _rot270, _rot90, square_only=True),
    HFLIP,
    VFLIP,
    View("transpose", _transpose, _transpose, square_only=True),
    View("antitranspose", _antitranspose, _antitranspose, square_only=True),
)
MODES = {
    "none": (IDENTITY,),
    "hflip": (IDENTITY, HFLIP),
    "vflip": (IDENTITY, VFLIP),
    "flips": (IDENTITY, HFLIP, VFLIP),
    "flips4": (IDENTITY, HFLIP, VFLIP, ROT180),
    "d4": D4,
}


def views(mode: str) -> tuple[View, ...]:
    """The views of a TTA mode: none (1), hflip (2), vflip (2), flips (3), flips4 (4: flips and both at once)
    or d4 (8, square images only)."""
    if mode not in MODES:
        raise CompkitError(f"unknown TTA mode {mode!r}; available: {', '.join(MODES)}")
    return MODES[mode]


def predict(fn: Callable[[Tensor], Tensor], images: Tensor, views: Sequence[View], *, dense: bool) -> Tensor:
    """Average ``fn``'s probabilities over views; dense outputs are inverted back first.

    ``images``: ``[B, C, H, W]``. ``fn`` maps ``[B, C, H, W]`` to PROBABILITIES, either ``[B, K]``
    (``dense`` False: merged as they are) or, with ``dense`` (the task's: segmentation), maps
    ``[B, K, H', W']``, each channel inverted with its view, whatever the resolution. Returns the
    mean, same shape, float32 at least.

    On CUDA the views go through ``fn`` together, as one batch of up to ``BATCH_PIXELS`` input
    pixels (a GPU is busier with one large batch than with k small ones), and an out-of-memory
    error there falls back to one view at a time. On the CPU a batch k times larger was measured
    2-3x slower than k calls (it leaves the caches), so each view is its own call. ``fn`` must
    treat samples independently (eval mode).
    """
    if not views:
        raise CompkitError("TTA needs at least one view; use views('none') for plain prediction")
    _check_square(images, views)
    pixels = images[0].numel() // images.shape[1] * len(images)
    group = max(1, BATCH_PIXELS // max(1, pixels)) if images.is_cuda else 1
    total = None
    for start in range(0, len(views), group):
        for view, output in _outputs(fn, images, views[start:start + group]):
            if dense:
                output = view.inverse(output)
            output = output.to(torch.promote_types(output.dtype, torch.float32))
            total = output if total is None else total + output
    return total / len(views)


def _outputs(fn: Callable[[Tensor], Tensor], images: Tensor, views: Sequence[View]) -> list[tuple[View, Tensor]]:
    """(view, fn's output for it) for each view: one batched call, or one call per view."""
    inputs = [view.forward(images) for view in views]
    if len(views) > 1 and all(tensor.shape == inputs[0].shape for tensor in inputs):
        try:
            return list(zip(views, fn(torch.cat(inputs)).split(len(images)), strict=True))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    return [(view, fn(tensor)) for view, tensor in zip(views, inputs, strict=True)]


def _check_square(images: Tensor, views: Sequence[View]) -> None:
    height, width = images.shape[-2:]
    turning = [view.name for view in views if view.square_only]
    if turning and height != width:
        raise CompkitError(
            f"TTA views {', '.join(turning)} swap height and width, so they need square images; "
            f"got {height}x{width}. Use tta 'flips' (or 'hflip'/'vflip') for non-square images"
        )
