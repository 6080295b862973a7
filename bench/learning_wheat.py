"""Does compkit's detection training learn like a plain loop? The wheat demo recipe, side by side.

compkit: ``compkit train wheat --fold 0 --recipe demo --set device=cpu`` on the synthetic demo fields, after
``compkit download wheat --demo`` and ``compkit folds wheat``. Plain: a hand-written PyTorch loop with no compkit
training code, on the same fold's rows (folds.csv as compkit wrote it; train.csv and the JPEGs read with pandas
and OpenCV): FCOS on a ResNet-18 with a 64-channel FPN built from torchvision, albumentations' resize, flips and
quarter turns moving the boxes, labels shifted past torchvision's background, AdamW without decay on 1-d
parameters, cosine schedule with warm-up per step, and compkit's seeding (initial weights, epoch order, one
augmentation seed per sample). Each epoch both are scored with the competition's metric
(``compkit.boxes.wheat_score``, measuring only) at the best score threshold of 0.05..0.95, as compkit scores a
detection epoch. Prints the per-epoch wheat score of both, their training loss, seconds per epoch
compkit/plain, and the fold's score for predicting no box at all.

    python bench/learning_wheat.py             # the recipe as shipped
    python bench/learning_wheat.py --set epochs=4 --set lr=0.002
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch

import compkit_wheat
from compkit import boxes as metric

RECIPE = Path(compkit_wheat.__file__).parent / "recipes" / "wheat-demo.toml"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
THRESHOLDS = [round(0.05 * step, 2) for step in range(1, 20)]  # 0.05 ... 0.95


def run_compkit(work: Path, sets: list[str], n_folds: int) -> pd.DataFrame:
    from click.testing import CliRunner

    from compkit.cli import cli

    data = ["--data-dir", str(work / "data")]
    runner = CliRunner()
    for step in (["download", "wheat", "--demo", *data],
                 ["folds", "wheat", "--n-folds", str(n_folds), *data],
                 ["train", "wheat", "--fold", "0", "--run", "bench", "--recipe", "demo", "--set", "device=cpu",
                  "--quiet", *data, "--runs-dir", str(work / "runs"),
                  *[part for item in sets for part in ("--set", item)]]):
        result = runner.invoke(cli, step, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return pd.read_csv(work / "runs" / "wheat" / "bench" / "fold0" / "metrics.csv")


def read_boxes(root: Path) -> dict[str, np.ndarray]:
    """Per file in train/: float32 [K, 4] (x1, y1, x2, y2) pixels from train.csv's "[x, y, w, h]" (K = 0: no row)."""
    rows = pd.read_csv(root / "train.csv", dtype={"image_id": str})
    xywh = rows["bbox"].str.strip("[]").str.split(",", expand=True).astype(np.float32).to_numpy()
    corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    ids = sorted(path.stem for path in (root / "train").glob("*.jpg"))  # compkit's table: every file, by id
    return {image_id: corners[(rows["image_id"] == image_id).to_numpy()].reshape(-1, 4) for image_id in ids}


def build_model(size: int) -> torch.nn.Module:
    """FCOS (wheat + background) on a randomly initialised ResNet-18, FPN over layer2-4 at 64 channels, P6/P7."""
    from torchvision.models import resnet18
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = BackboneWithFPN(resnet18(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512],
                               64, extra_blocks=LastLevelP6P7(64, 64))
    # the images come normalised and at their final size: the detector's own transform is the identity
    return FCOS(backbone, num_classes=2, min_size=size, max_size=size, image_mean=[0.0, 0.0, 0.0],
                image_std=[1.0, 1.0, 1.0], score_thresh=0.05, detections_per_img=200)


def make_optimizer(model: torch.nn.Module, config: dict) -> torch.optim.Optimizer:
    """The recipe's optimizer; biases and norm scales (1-d) undecayed unless ``decay_1d``."""
    decayed = [p for p in model.parameters() if p.ndim > 1 or config["decay_1d"]]
    others = [p for p in model.parameters() if not (p.ndim > 1 or config["decay_1d"])]
    groups = [{"params": decayed, "weight_decay": config["weight_decay"]}, {"params": others, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=config["lr"], eps=config["eps"])
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"], nesterov=config["nesterov"])
    raise SystemExit(f"this bench mirrors optimizer adamw or sgd, not {config['optimizer']!r}")


def make_schedule(optimizer: torch.optim.Optimizer, config: dict, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step lr factor: linear warm-up from 1/(warmup+1), then half a cosine to 0 (or constant: ``none``)."""
    if config["scheduler"] == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if config["scheduler"] != "cosine":
        raise SystemExit(f"this bench mirrors scheduler cosine or none, not {config['scheduler']!r}")
    total, warmup = max(1, steps * config["epochs"]), round(config["warmup_epochs"] * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def detections(model: torch.nn.Module, images: torch.Tensor) -> list[np.ndarray]:
    """Eval-mode boxes of ``images`` [B, 3, H, W]: per image float32 [K, 6] (score, label, x1, y1, x2, y2),
    boxes divided by the input's width and height, highest score first, torchvision's background dropped."""
    height, width = images.shape[-2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    rows = []
    for found in model(list(images)):
        keep = found["labels"] > 0
        scores, labels, boxes = found["scores"][keep], found["labels"][keep] - 1, found["boxes"][keep]
        order = scores.argsort(descending=True)
        rows.append(torch.cat([scores[order, None], labels[order, None].float(),
                               (boxes[order] / scale).clamp(0, 1)], dim=1).numpy())
    return rows


def best_score(targets: list[np.ndarray], predictions: list[np.ndarray]) -> float:
    """The wheat score at the best of ``THRESHOLDS`` (boxes scoring at least it are kept)."""
    truth = metric.ragged(targets, 5)
    return max(metric.wheat_score(truth, metric.ragged([rows[rows[:, 0] >= cut] for rows in predictions], 6))
               for cut in THRESHOLDS)


def plain_loop(work: Path, config: dict) -> tuple[list[tuple[float, float, float]], float]:
    """(wheat score, training loss, seconds) per epoch of a hand-written loop on fold 0 of the same data, and the
    fold's score for no box at all."""
    root = work / "data" / "wheat"
    boxes = read_boxes(root)
    folds = pd.read_csv(root / "folds.csv", dtype={"image_id": str}).set_index("image_id")["fold"]
    ids = np.array(list(boxes))
    fold = folds.reindex(ids).to_numpy()
    assert not np.isnan(fold).any(), "folds.csv does not cover every train/ image"
    train_ids, valid_ids = ids[fold != 0], ids[fold == 0]
    size, seed = config["image_size"], config["seed"]
    resize = A.Resize(size, size, interpolation=cv2.INTER_AREA)
    normalise = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    moving = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_visibility=0.3)
    train_tf = A.Compose([resize, A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5),
                          normalise], bbox_params=moving)
    valid_tf = A.Compose([resize, normalise], bbox_params=moving)

    def item(image_id: str, transform: A.Compose, sample_seed: int | None = None) -> tuple[torch.Tensor, dict]:
        if sample_seed is not None:  # compkit's scheme: a sample's augmentation depends on (seed, epoch, index) only
            transform.set_random_state(np.random.default_rng(sample_seed), random.Random(sample_seed))
        image = cv2.cvtColor(cv2.imread(str(root / "train" / f"{image_id}.jpg")), cv2.COLOR_BGR2RGB)
        corners = boxes[image_id]
        out = transform(image=image, bboxes=corners, labels=np.zeros(len(corners), np.int64))
        target = {"boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),
                  "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1)) + 1}  # 0: background
        return torch.from_numpy(out["image"].transpose(2, 0, 1).copy()), target

    valid = [item(image_id, valid_tf) for image_id in valid_ids]
    valid_x = torch.stack([image for image, _ in valid])
    scale = np.array([size, size, size, size], np.float32)
    valid_targets = [np.column_stack([target["labels"].numpy() - 1.0, target["boxes"].numpy() / scale]).astype(
        np.float32).reshape(-1, 5) for _, target in valid]
    nothing = [np.zeros((0, 6), np.float32)] * len(valid_targets)
    empty = metric.wheat_score(metric.ragged(valid_targets, 5), metric.ragged(nothing, 6))

    torch.manual_seed(seed)  # as compkit seeds before building: the same initial weights
    model = build_model(size)
    optimizer = make_optimizer(model, config)
    batch_size = config["batch_size"]
    steps = len(train_ids) // batch_size if config["drop_last"] else math.ceil(len(train_ids) / batch_size)
    schedule = make_schedule(optimizer, config, steps)
    results = []
    for epoch in range(1, config["epochs"] + 1):
        started = time.perf_counter()
        order = np.random.default_rng([seed, epoch, 0]).permutation(len(train_ids))
        sample_seeds = np.random.SeedSequence([seed, epoch, 1]).generate_state(len(train_ids))
        model.train()
        losses = []
        for step in range(steps):
            chosen = order[step * batch_size:(step + 1) * batch_size]
            batch = [item(train_ids[index], train_tf, int(sample_seeds[index])) for index in chosen]
            loss = torch.stack(list(model([image for image, _ in batch], [target for _, target in batch]).values())).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            found = [rows for start in range(0, len(valid_x), batch_size)
                     for rows in detections(model, valid_x[start:start + batch_size])]
        score = best_score(valid_targets, found)
        results.append((score, float(np.mean(losses)), time.perf_counter() - started))
    return results, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], help="recipe overrides, key=value")
    args = parser.parse_args()
    from compkit.config import Config, parse_sets, read_toml

    config = Config().replace(**read_toml(RECIPE)).replace(**parse_sets(args.set)).to_dict()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        ours = run_compkit(work, args.set, config["n_folds"])
        plain, empty = plain_loop(work, config)
    print(f"wheat demo, fold 0 of {config['n_folds']}, {config['epochs']} epochs, recipe {RECIPE.name} "
          f"{' '.join(args.set)}, cpu, {torch.get_num_threads()} torch threads")
    print("| epoch | compkit wheat | plain wheat | compkit loss | plain loss | compkit s | plain s | compkit/plain |")
    print("|---|---|---|---|---|---|---|---|")
    for row, (score, loss, seconds) in zip(ours.to_dict("records"), plain):
        print(f"| {row['epoch']} | {row['wheat']:.3f} | {score:.3f} | {row['train_loss']:.3f} | {loss:.3f} | "
              f"{row['seconds']:.1f} | {seconds:.1f} | {row['seconds'] / seconds:.2f} |")
    ratio = ours["seconds"].sum() / sum(seconds for *_, seconds in plain)
    print(f"no box at all (the fold's empty-prediction baseline): {empty:.3f}")
    print(f"seconds per epoch, compkit / plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
