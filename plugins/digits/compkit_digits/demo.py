"""Kaggle's digit-recognizer files made from scikit-learn's bundled digit scans (real data, offline)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from compkit_digits import PIXELS

TEST_FRACTION = 0.2


def upscale(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 28, 28) uint8 0..255, the digit centred in a 4-pixel margin like MNIST."""
    scaled = np.clip(images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.zeros((len(images), 28, 28), dtype=np.uint8)
    for i, image in enumerate(scaled):
        out[i, 4:24, 4:24] = cv2.resize(image, (20, 20), interpolation=cv2.INTER_LINEAR)
    return out


def write_demo(root: Path, seed: int) -> None:
    """Write train.csv (label, pixel0..783), test.csv and sample_submission.csv (ImageId, Label)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    images, labels = upscale(digits.images[order]), digits.target[order]
    n_test = int(len(labels) * TEST_FRACTION)
    pixels = images.reshape(len(images), -1)
    train = pd.DataFrame(pixels[n_test:], columns=PIXELS)
    train.insert(0, "label", labels[n_test:])
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame(pixels[:n_test], columns=PIXELS).to_csv(root / "test.csv", index=False)
    sample = pd.DataFrame({"ImageId": np.arange(1, n_test + 1), "Label": 0})
    sample.to_csv(root / "sample_submission.csv", index=False)
    # the held-out truth, so a demo run can report a real test accuracy
    pd.DataFrame({"ImageId": sample["ImageId"], "Label": labels[:n_test]}).to_csv(root / "test_labels.csv", index=False)
