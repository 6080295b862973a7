"""Does compkit learn like a plain loop on real data? The digits demo recipe, side by side.

compkit: ``compkit train digits --fold 0 --recipe demo`` on scikit-learn's
real digit scans (the demo data). Plain: a hand-written PyTorch loop with no compkit code, on the
same fold: the same timm ResNet-18, albumentations transforms, AdamW without decay on 1-d
parameters, cosine schedule with warm-up per step, batch size and seed, and BatchNorm statistics
recomputed with torch's ``update_bn`` when the recipe sets ``precise_bn``. Prints the per-epoch
validation accuracy of both, and seconds per epoch compkit/plain.

    python bench/learning_digits.py             # the recipe as shipped
    python bench/learning_digits.py --set precise_bn=0 --set scheduler=onecycle --set lr=0.002
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import timm
import torch
from torch import nn

import compkit_digits

RECIPE = Path(compkit_digits.__file__).parent / "recipes" / "digits-demo.toml"


def run_compkit(work: Path, sets: list[str]) -> pd.DataFrame:
    from click.testing import CliRunner

    from compkit.cli import cli

    places = ["--data-dir", str(work / "data"), "--runs-dir", str(work / "runs")]
    runner = CliRunner()
    for step in (["download", "digits", "--demo", "--data-dir", str(work / "data")],
                 ["train", "digits", "--fold", "0", "--run", "bench", "--recipe", str(RECIPE), "--quiet", *places,
                  *[part for item in sets for part in ("--set", item)]]):
        result = runner.invoke(cli, step, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return pd.read_csv(work / "runs" / "digits" / "bench" / "fold0" / "metrics.csv")


def plain_loop(work: Path, config: dict) -> list[tuple[float, float]]:
    """(validation accuracy, seconds) per epoch of a hand-written loop on fold 0 of the same data."""
    table = pd.read_csv(work / "data" / "digits" / "train.csv")
    fold = pd.read_csv(work / "data" / "digits" / "folds.csv")["fold"].to_numpy()
    images = table.filter(like="pixel").to_numpy("uint8").reshape(-1, 28, 28)
    labels = table["label"].to_numpy()
    normalise = A.Normalize(mean=(0.5,), std=(0.5,), max_pixel_value=255.0)
    size = config["image_size"]
    train_tf = A.Compose([A.Resize(size, size), A.Affine(translate_percent=0.08, rotate=(-10, 10),
                                                         scale=(0.9, 1.1), p=0.8), normalise], seed=config["seed"])
    valid_tf = A.Compose([A.Resize(size, size), normalise])

    def batch(indices: np.ndarray, transform: A.Compose) -> torch.Tensor:
        return torch.from_numpy(np.stack([transform(image=images[i])["image"] for i in indices])[:, None])

    train_rows, valid_rows = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
    valid_x, valid_y = batch(valid_rows, valid_tf), torch.from_numpy(labels[valid_rows])
    torch.manual_seed(config["seed"])
    model = timm.create_model(config["model"].split("/", 1)[1], num_classes=10, in_chans=1)
    decayed = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": config["weight_decay"]},
                                   {"params": others, "weight_decay": 0.0}], lr=config["lr"])
    steps = len(train_rows) // config["batch_size"]
    total, warmup = steps * config["epochs"], round(config["warmup_epochs"] * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    results = []
    for epoch in range(config["epochs"]):
        started = time.perf_counter()
        order = np.random.default_rng([config["seed"], epoch]).permutation(train_rows)[: steps * config["batch_size"]]
        batches = order.reshape(steps, -1)
        model.train()
        for rows in batches:
            loss = nn.functional.cross_entropy(model(batch(rows, train_tf)), torch.from_numpy(labels[rows]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if config["precise_bn"]:
            chosen = itertools.islice(batches, config["precise_bn"])
            torch.optim.swa_utils.update_bn((batch(rows, train_tf) for rows in chosen), model)
        model.eval()
        with torch.no_grad():
            accuracy = (model(valid_x).argmax(1) == valid_y).float().mean().item()
        results.append((accuracy, time.perf_counter() - started))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], help="recipe overrides, key=value")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from compkit.config import Config, parse_sets, read_toml

    config = Config().replace(**read_toml(RECIPE)).replace(**parse_sets(args.set)).to_dict()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        ours = run_compkit(work, args.set)
        plain = plain_loop(work, config)
    print(f"digits demo, fold 0, {config['epochs']} epochs, recipe {RECIPE.name} {' '.join(args.set)}")
    print("| epoch | compkit accuracy | plain accuracy | compkit s | plain s |")
    print("|---|---|---|---|---|")
    for row, (accuracy, seconds) in zip(ours.to_dict("records"), plain):
        print(f"| {row['epoch']} | {row['accuracy']:.3f} | {accuracy:.3f} | {row['seconds']:.1f} | {seconds:.1f} |")
    ratio = ours["seconds"].sum() / sum(seconds for _, seconds in plain)
    print(f"seconds per epoch, compkit / plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
