"""Segmentation post-processing chosen on out-of-fold predictions: threshold, small-component removal
and the SIIM winners' rule (an image stays empty unless enough pixels pass a higher threshold).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

from compkit.errors import CompkitError
from compkit.metrics import dice_from_counts

# 8-connected within an image and never across images, so one call labels a whole stack.
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = True

PARAMS = ("threshold", "min_area", "top_threshold", "min_top_pixels")
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2).tolist())
DEFAULT_TOP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Component and top-pixel sizes as fractions of the image area, so one grid fits every resolution
# (at 1024x1024: 512 to 8192 pixels; the SIIM winners used 2048 at 1024).
AREA_FRACTIONS = (1 / 2048, 1 / 1024, 1 / 512, 1 / 256, 1 / 128)
CHUNK_PIXELS = 1 << 24  # the search counts this many pixels' worth of images at a time


def apply(probabilities: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Masks uint8 (N, H, W) from probabilities float (N, H, W) under ``params`` (as :func:`search` returns).

    ``threshold``: foreground is probability > threshold. ``min_area``: drop 8-connected components
    smaller than this many pixels (0 keeps all). Optional ``top_threshold`` with ``min_top_pixels``:
    an image is empty unless at least ``min_top_pixels`` pixels exceed ``top_threshold``.
    """
    probabilities = _check_stack(probabilities, "probabilities")
    params = _check_params(params)
    masks = probabilities > params["threshold"]
    if params.get("min_area", 0) > 1:
        masks = remove_small_components(masks, params["min_area"])
    if "top_threshold" in params:
        masks[_top_counts(probabilities, params["top_threshold"]) < params["min_top_pixels"]] = False
    return masks.astype(np.uint8)


def remove_small_components(masks: np.ndarray, min_area: int) -> np.ndarray:
    """Masks bool (N, H, W) without the 8-connected components of fewer than ``min_area`` pixels."""
    labels, _ = ndimage.label(masks, structure=_STACK_STRUCTURE)
    keep = np.bincount(labels.ravel(), minlength=1) >= min_area
    keep[0] = False
    return keep[labels]


def search(
    probabilities: np.ndarray,
    targets: np.ndarray,
    thresholds: Any = None,
    min_areas: Any = None,
    triple: bool = False,
) -> dict[str, Any]:
    """Grid-search the post-processing that maximises mean Dice of ``apply`` on (N, H, W) inputs.

    ``targets``: (N, H, W) masks (foreground > 0.5). Grids default to ``DEFAULT_THRESHOLDS`` and
    0 plus ``AREA_FRACTIONS`` of the image area; ``triple`` adds the winners' rule over
    ``DEFAULT_TOP_THRESHOLDS`` and at least 1 pixel or ``AREA_FRACTIONS`` of the area. Returns the
    params plus ``"score"``; ties go to the earliest grid point (lowest threshold and area).
    """
    probabilities, targets = _check_stack(probabilities, "probabilities"), _check_stack(targets, "targets")
    if targets.shape != probabilities.shape:
        raise CompkitError(f"targets {targets.shape} and probabilities {probabilities.shape} differ in shape")
    step = max(1, CHUNK_PIXELS // max(1, probabilities[0].size)) if len(probabilities) else 1
    chunks = ((targets[start:start + step], probabilities[start:start + step])
              for start in range(0, len(probabilities), step))
    return search_chunks(chunks, thresholds, min_areas, triple)


def search_chunks(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    thresholds: Any = None,
    min_areas: Any = None,
    triple: bool = False,
) -> dict[str, Any]:
    """:func:`search` over (targets, probabilities) chunks of images, one chunk in memory at a time.

    Every count the search needs is per image (components never cross images), so the result is
    the same as for the whole stack at once.
    """
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    counts: dict[str, list[np.ndarray]] = {"intersections": [], "predicted": [], "truth": [], "top": []}
    area = None
    for targets, probabilities in chunks:
        probabilities = _check_stack(np.asarray(probabilities, dtype=np.float32), "probabilities")
        truth = _check_stack(np.asarray(targets), "targets") > 0.5
        if truth.shape != probabilities.shape:
            raise CompkitError(f"targets {truth.shape} and probabilities {probabilities.shape} differ in shape")
        if area not in (None, probabilities[0].size):
            raise CompkitError(f"post-processing search needs images of one size; got {probabilities.shape[1:]} "
                               f"after images of {area} pixels")
        area = probabilities.shape[1] * probabilities.shape[2]
        if min_areas is None:
            min_areas = (0, *_fractions_of(area))
        intersections, predicted = _grid_counts(probabilities, truth, thresholds, min_areas)
        counts["intersections"].append(intersections)
        counts["predicted"].append(predicted)
        counts["truth"].append(np.count_nonzero(truth.reshape(len(truth), -1), axis=1))
        if triple:
            counts["top"].append(np.stack([_top_counts(probabilities, top) for top in DEFAULT_TOP_THRESHOLDS]))
    if area is None:
        raise CompkitError("post-processing search needs at least one image of out-of-fold predictions")
    intersections, predicted = np.concatenate(counts["intersections"], -1), np.concatenate(counts["predicted"], -1)
    true_counts = np.concatenate(counts["truth"])
    top_counts = np.concatenate(counts["top"], -1) if triple else None
    best = {"score": -1.0}
    for gate_params, gate in _gates(top_counts, area, len(true_counts)):
        # (T, A) mean Dice; a gated-off image predicts nothing.
        scores = dice_from_counts(intersections * gate, predicted * gate + true_counts).mean(axis=-1)
        t, a = np.unravel_index(np.argmax(scores), scores.shape)
        if scores[t, a] > best["score"]:
            best = {"threshold": float(thresholds[t]), "min_area": int(min_areas[a]), **gate_params}
            best["score"] = float(scores[t, a])
    return best


def _grid_counts(
    probabilities: np.ndarray, truth: np.ndarray, thresholds: Any, min_areas: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Intersection with truth and predicted pixels per threshold, min_area and image: int64 (T, A, N) each."""
    counts = [_kept_counts(probabilities > threshold, truth, min_areas) for threshold in thresholds]
    return np.stack([pair[0] for pair in counts]), np.stack([pair[1] for pair in counts])


def _kept_counts(masks: np.ndarray, truth: np.ndarray, min_areas: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each min_area, per image: intersection with truth and predicted pixels, int64 (A, N) each."""
    labels, count = ndimage.label(masks, structure=_STACK_STRUCTURE)
    foreground = np.flatnonzero(labels)
    components = labels.ravel()[foreground] - 1
    sizes = np.bincount(components, minlength=count)
    overlaps = np.bincount(components[truth.ravel()[foreground]], minlength=count)
    images = np.zeros(count, dtype=np.int64)
    # Components never cross images, so any one of a component's pixels names its image.
    images[components] = foreground // masks[0].size
    kept_overlaps, kept_sizes = [], []
    for min_area in min_areas:
        kept = sizes >= min_area
        kept_overlaps.append(np.bincount(images[kept], weights=overlaps[kept], minlength=len(masks)))
        kept_sizes.append(np.bincount(images[kept], weights=sizes[kept], minlength=len(masks)))
    return np.array(kept_overlaps, dtype=np.int64), np.array(kept_sizes, dtype=np.int64)


def _gates(top_counts: np.ndarray | None, area: int, images: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Winners' rule params and which images (bool (N,)) pass them, from the pixels above each top
    threshold per image ((len(DEFAULT_TOP_THRESHOLDS), N)); one all-pass gate when that is None."""
    if top_counts is None:
        return [({}, np.ones(images, dtype=bool))]
    gates = []
    for top_threshold, counts in zip(DEFAULT_TOP_THRESHOLDS, top_counts):
        for pixels in sorted({1, *_fractions_of(area)}):
            gates.append(({"top_threshold": top_threshold, "min_top_pixels": pixels}, counts >= pixels))
    return gates


def _top_counts(probabilities: np.ndarray, top_threshold: float) -> np.ndarray:
    """Pixels above ``top_threshold`` in each image, int64 (N,)."""
    return np.count_nonzero((probabilities > top_threshold).reshape(len(probabilities), -1), axis=1)


def _fractions_of(area: int) -> list[int]:
    return [max(1, round(area * fraction)) for fraction in AREA_FRACTIONS]


def _check_stack(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise CompkitError(
            f"post-processing needs {name} of shape (N, H, W); got {array.shape}. Squeeze a (N, 1, H, W) channel first"
        )
    return array


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    params = {key: value for key, value in params.items() if key != "score"}
    unknown = sorted(set(params) - set(PARAMS))
    if unknown or "threshold" not in params:
        raise CompkitError(f"post-processing params {params} need 'threshold' and only {', '.join(PARAMS)}")
    if ("top_threshold" in params) != ("min_top_pixels" in params):
        raise CompkitError("post-processing params need 'top_threshold' and 'min_top_pixels' together")
    return params
