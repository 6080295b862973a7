"""A tiny detection fit that tests/test_detection.py launches under ``torchrun --nproc_per_node 2`` (DDP on gloo).

``python tests/_ddp_detection_worker.py OUT_DIR``: FCOS on bright squares, one epoch, 5 validation images
(an odd count, so a padded duplicate would show), the fold's boxes written once by rank 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import albumentations as A
import numpy as np
import torch

from compkit import boxes, engine, registry, tasks
from compkit.datasets import ArrayDataset

SIZE = 64


def squares(count: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, targets = np.zeros((count, SIZE, SIZE, 3), np.uint8), []
    for index in range(count):
        x, y = rng.integers(0, SIZE - 20, 2)
        side = int(rng.integers(10, 20))
        images[index, y:y + side, x:x + side] = 220
        targets.append(np.array([[0, x, y, x + side, y + side]], np.float32))
    return images, targets


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)  # two ranks share two cores
    task = tasks.get("detection")
    train = ArrayDataset(*squares(12, 0), task.compose([A.HorizontalFlip(p=0.5), A.Normalize()]), task=task)
    valid = ArrayDataset(*squares(5, 1), task.compose([A.Normalize()]), task=task)
    torch.manual_seed(0)
    model = registry.get().model("tv-det/fcos_resnet18_fpn64", 1, 3, image_size=(SIZE, SIZE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loaders = [engine.make_loader(data, batch_size=2, train=stage == "train", num_workers=0, seed=3)
               for data, stage in ((train, "train"), (valid, "valid"))]
    with engine.Engine(model, registry.get().loss("detector"), optimizer, task=task, device="cpu",
                       quiet=True) as trainer:
        trainer.fit(*loaders, epochs=1, score=boxes.map50, metric="map50", out_dir=out_dir,
                    valid_ids=[f"v{i}" for i in range(5)])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
