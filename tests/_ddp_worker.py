"""A tiny classification fit that the engine tests launch as a separate process.

Alone: ``python tests/_ddp_worker.py OUT_DIR [--epochs N] [--resume] [--pause-after K]``; under
``torchrun --nproc_per_node 2`` it runs the same fit with DDP on gloo. ``--pause-after K`` makes the
training data hang a few batches into epoch K+1 (after writing OUT_DIR/paused), so a test can kill it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compkit import engine, optim
from compkit.config import Config
from compkit.errors import CompkitError

TRAIN_SIZE, VALID_SIZE, CLASSES = 48, 21, 3  # an odd validation size shows any padded duplicate
PAUSE = {"armed": False, "served": 0}


class Shapes(torch.utils.data.Dataset):
    """Item: image float32 (1, 8, 8) with the class's pattern plus noise, randomly flipped; target int64."""

    def __init__(self, size: int, offset: int, out_dir: Path | None = None) -> None:
        generator = torch.Generator().manual_seed(offset)
        self.targets = torch.arange(size) % CLASSES
        patterns = torch.randn(CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        self.images = patterns[self.targets] + 0.8 * torch.randn(size, 1, 8, 8, generator=generator)
        self.out_dir = out_dir

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self._maybe_pause()
        image = self.images[index]
        if torch.rand(()) < 0.5:  # an augmentation drawn from the per-sample seed
            image = image.flip(-1)
        return {"image": image, "target": self.targets[index]}

    def _maybe_pause(self) -> None:
        if self.out_dir is None or not PAUSE["armed"]:
            return
        PAUSE["served"] += 1
        if PAUSE["served"] > 20:  # two and a half batches into the epoch
            (self.out_dir / "paused").touch()
            time.sleep(600)


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),  # draws from torch's stream: resuming must replay it too
        nn.Linear(32, CLASSES),
    )


def accuracy(targets: np.ndarray, probabilities: np.ndarray) -> float:
    return float((probabilities.argmax(1) == targets).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-after", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # identical float reductions in every process; two ranks share two cores
    config = Config(
        epochs=args.epochs, batch_size=8, lr=3e-3, warmup_epochs=1.0, ema=0.9, seed=7, device="cpu"
    )
    torch.manual_seed(config.seed)
    network = model()
    train = engine.make_loader(
        Shapes(TRAIN_SIZE, 1, args.out_dir), batch_size=8, train=True, num_workers=0, seed=7
    )
    valid = engine.make_loader(Shapes(VALID_SIZE, 2), batch_size=4, train=False, num_workers=0, seed=7)
    optimizer = optim.build_optimizer(network, config)
    steps = optim.optimizer_steps_per_epoch(len(train), config.accumulate)
    schedule = optim.build_scheduler(optimizer, config, steps)
    rank = os.environ.get("RANK", "0")

    def on_epoch_end(epoch: int, row: dict) -> None:
        with open(args.out_dir / f"callback_rank{rank}.txt", "a") as handle:
            handle.write(f"{epoch} {row['accuracy']}\n")
        PAUSE["armed"] = epoch == args.pause_after

    with engine.Engine(
        network,
        nn.CrossEntropyLoss(),
        optimizer,
        schedule,
        ema=config.ema,
        seed=config.seed,
        device="cpu",
        quiet=True,
    ) as trainer:
        trainer.fit(
            train,
            valid,
            epochs=config.epochs,
            score=accuracy,
            metric="accuracy",
            out_dir=args.out_dir,
            resume=args.resume,
            config=config.to_dict(),
            valid_ids=[f"v{i}" for i in range(VALID_SIZE)],
            on_epoch_end=on_epoch_end,
        )


if __name__ == "__main__":
    try:
        main()
    except CompkitError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
