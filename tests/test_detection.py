"""The detection task: items whose boxes follow the augmentation, torchvision's detectors through the Engine,
ragged out-of-fold files, box TTA inverted exactly, and the anchors a learner can print."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from torch import nn

from compkit import boxes, detectors, engine, oof, registry, tasks, tta
from compkit.datasets import ArrayDataset
from compkit.errors import CompkitError

TASK = tasks.get("detection")
SIZE = 64


class _Comp:
    name, classes, in_channels, task = "toy", ("object",), 3, "detection"


def squares(count: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint8 [N, 64, 64, 3] dark images with 1-2 bright squares; their (label, x1, y1, x2, y2) pixel rows."""
    rng = np.random.default_rng(seed)
    images, targets = np.zeros((count, SIZE, SIZE, 3), np.uint8), []
    for index in range(count):
        rows = []
        for _ in range(rng.integers(1, 3)):
            x, y = rng.integers(0, SIZE - 20, 2)
            side = int(rng.integers(10, 20))
            images[index, y:y + side, x:x + side] = 220
            rows.append([0, x, y, x + side, y + side])
        targets.append(np.array(rows, np.float32))
    return images, targets


def test_a_flip_moves_the_boxes_with_the_image():
    images, targets = squares(1)
    dataset = ArrayDataset(images, targets, TASK.compose([A.HorizontalFlip(p=1), A.Normalize()]), task=TASK)
    item = dataset[0]
    expected = targets[0][:, 1:].copy()
    expected[:, [0, 2]] = SIZE - targets[0][:, [3, 1]]
    assert torch.allclose(item["target"]["boxes"], torch.from_numpy(expected))
    assert item["target"]["labels"].dtype == torch.int64 and item["image"].shape == (3, SIZE, SIZE)
    TASK.check_item(item, _Comp(), (SIZE, SIZE))
    # the flipped image has its bright pixels inside the flipped boxes
    x1, y1, x2, y2 = item["target"]["boxes"][0].int().tolist()
    assert item["image"][0, y1:y2, x1:x2].min() > item["image"][0].mean()


def test_a_box_leaving_the_image_is_clipped_or_dropped():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    rows = np.array([[0, 40, 10, 60, 30], [0, 2, 2, 30, 30]], np.float32)
    crop = TASK.compose([A.Crop(x_min=0, y_min=0, x_max=48, y_max=48), A.Normalize()])
    _, target = TASK.transformed(crop, image, rows)
    # the first box keeps 8 of its 20 px (40 %, above the 30 % kept): clipped at the crop; the second is whole
    assert target["boxes"].tolist() == [[40, 10, 48, 30], [2, 2, 30, 30]]
    crop = TASK.compose([A.Crop(x_min=0, y_min=0, x_max=44, y_max=48), A.Normalize()])
    _, target = TASK.transformed(crop, image, rows)
    assert target["boxes"].tolist() == [[2, 2, 30, 30]]  # 4 of 20 px visible: dropped


@pytest.mark.parametrize("target, message", [
    ({"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int64)}, "empty or outside"),
    ({"boxes": torch.tensor([[0.0, 0, 70, 10]]), "labels": torch.zeros(1, dtype=torch.int64)}, "outside"),
    ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.ones(1, dtype=torch.int64)}, "label is 1"),
    ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.zeros(2, dtype=torch.int64)}, "int64 \\[K\\]"),
    (torch.zeros(4), "dict of 'boxes' and 'labels'"),
])
def test_items_that_do_not_fit_are_refused(target, message):
    with pytest.raises(CompkitError, match=message):
        TASK.check_target(target, _Comp(), (SIZE, SIZE))


def test_the_collate_keeps_a_list_of_targets():
    images, targets = squares(3)
    dataset = ArrayDataset(images, targets, TASK.compose([A.Normalize()]), task=TASK)
    loader = engine.make_loader(dataset, batch_size=3, train=False, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, SIZE, SIZE)
    assert [len(item["boxes"]) for item in batch["target"]] == [len(rows) for rows in targets]


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
                                  "ssdlite320_mobilenet_v3_large", "fasterrcnn_resnet18_fpn", "fcos_resnet18_fpn64",
                                  "retinanet_resnet18_fpn"])
def test_each_detector_trains_and_detects_through_the_task(name):
    torch.manual_seed(0)
    model = registry.get().model(f"tv-det/{name}", 2, 3, pretrained=False, image_size=(SIZE, SIZE))
    images = torch.randn(2, 3, SIZE, SIZE)
    target = [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])},
              {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # no box: allowed
    model.train()
    loss = TASK.training_loss(model, registry.get().loss("detector"), images, target)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        found = TASK.forward(model, images)
    assert len(found) == 2 and all(rows.shape[1] == 6 for rows in found)
    for rows in found:
        assert bool(((rows[:, 2:] >= 0) & (rows[:, 2:] <= 1)).all())  # normalised boxes
        assert bool((rows[:-1, 0] >= rows[1:, 0]).all())  # highest score first
        assert bool(((rows[:, 1] >= 0) & (rows[:, 1] < 2)).all())  # labels back in 0..C-1
    if not name.startswith("ssd"):  # SSD resizes to its own 320; the others keep the input size
        transform = model.transform
        assert (transform.min_size, transform.max_size) == ((SIZE,), SIZE)


def test_an_unknown_detector_lists_the_known_ones():
    with pytest.raises(CompkitError, match="fasterrcnn_resnet50_fpn_v2"):
        registry.get().model("tv-det/fasterrcnn_resnet51", 1, 3)


def test_the_engine_trains_a_detector_and_its_oof_file_reproduces_the_score(tmp_path: Path):
    images, targets = squares(16)
    train = ArrayDataset(images, targets, TASK.compose([A.HorizontalFlip(p=0.5), A.Normalize()]), task=TASK)
    valid_images, valid_targets = squares(6, seed=1)
    valid = ArrayDataset(valid_images, valid_targets, TASK.compose([A.Normalize()]), task=TASK)
    torch.manual_seed(0)
    model = registry.get().model("tv-det/fcos_resnet18_fpn64", 1, 3, image_size=(SIZE, SIZE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loaders = [engine.make_loader(data, batch_size=4, train=stage == "train", num_workers=0)
               for data, stage in ((train, "train"), (valid, "valid"))]
    with engine.Engine(model, registry.get().loss("detector"), optimizer, task=TASK, device="cpu",
                       quiet=True) as trainer:
        result = trainer.fit(*loaders, epochs=2, score=boxes.map50, out_dir=tmp_path)
        predicted = trainer.predict(loaders[1])
    stored = oof.load(tmp_path / "oof.npz")
    assert len(stored) == 6 and stored.probabilities().dtype == object
    assert TASK.validation_score(boxes.map50, stored.targets, stored.probabilities()) == pytest.approx(
        result["best_score"])
    expected = [rows[:, [0, 1, 2, 3, 4]] / np.array([1, SIZE, SIZE, SIZE, SIZE], np.float32) for rows in valid_targets]
    assert all(np.allclose(a, b) for a, b in zip(stored.targets, expected))
    assert len(predicted) == 6 and all(rows.shape[1] == 6 for rows in predicted)


def test_ragged_oof_files_round_trip_without_pickles(tmp_path: Path):
    rng = np.random.default_rng(0)
    predictions = TASK.random_predictions(5, _Comp(), rng)
    targets = boxes.ragged([rows[:, 1:] for rows in predictions], 5)
    oof.write(tmp_path / "oof.npz", [f"i{k}" for k in range(5)], predictions, targets, epoch=3)
    stored = oof.load(tmp_path / "oof.npz")
    assert all(np.array_equal(a, b) for a, b in zip(stored.probabilities(), predictions))
    assert all(np.array_equal(a, b) for a, b in zip(stored.targets, targets))
    with np.load(tmp_path / "oof.npz", allow_pickle=False) as archive:
        assert archive["probabilities"].dtype == np.float32 and oof.stored_epoch(tmp_path / "oof.npz") == 3


class _Brightest(nn.Module):
    """An orientation-sensitive fake detector: one box centred on the brightest pixel of each image."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        found = []
        for image in images:
            y, x = divmod(int(image[0].argmax()), image.shape[-1])
            found.append({"boxes": torch.tensor([[x - 2.0, y - 2.0, x + 3.0, y + 3.0]]),
                          "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
        return found


@pytest.mark.parametrize("mode", ["hflip", "vflip", "flips", "flips4"])
def test_box_tta_maps_every_view_back_exactly(mode):
    images = torch.zeros(3, 3, 40, 48)
    for index, (y, x) in enumerate([(5, 7), (30, 40), (12, 2)]):
        images[index, :, y, x] = 1.0
    model = _Brightest()
    plain = TASK.forward(model, images)
    merged = TASK.predict_views(lambda x: TASK.forward(model, x), images, tta.views(mode))
    for one, many in zip(plain, merged):
        assert torch.allclose(one, many, atol=1e-6)
    flipped = TASK.forward(model, images.flip(-1))  # without mapping back the boxes would differ
    assert not torch.allclose(flipped[0], plain[0])


def test_box_tta_refuses_quarter_turns():
    with pytest.raises(CompkitError, match="flips only"):
        TASK.predict_views(lambda x: TASK.forward(_Brightest(), x), torch.zeros(1, 3, 8, 8), tta.views("d4"))


def test_the_anchors_per_feature_level_are_torchvisions():
    model = registry.get().model("tv-det/fasterrcnn_resnet18_fpn", 1, 3, image_size=(128, 128))
    levels = tasks.detection.anchors(model, (128, 128))
    generator = tasks.detection.anchor_generator(model)
    assert type(generator).__name__ == "AnchorGenerator"
    strides = [4, 8, 16, 32, 64]  # FPN levels P2-P5 and the pooled P6
    assert [len(level) for level in levels] == [(128 // stride) ** 2 * 3 for stride in strides]
    for level, size in zip(levels, (32, 64, 128, 256, 512)):  # one size per level, ratios 0.5, 1, 2
        areas = (level[:, 2] - level[:, 0]) * (level[:, 3] - level[:, 1])
        assert torch.allclose(areas, torch.full_like(areas, float(size * size)), rtol=0.05)
    assert detectors.anchor_generator(registry.get().model("tv-det/fcos_resnet18_fpn", 1, 3)) is not None


def test_fold_merging_of_identical_predictions_changes_nothing():
    predictions = TASK.random_predictions(4, _Comp(), np.random.default_rng(1))
    merged = TASK.merge([predictions, predictions, predictions])
    for one, fused in zip(predictions, merged):
        assert np.allclose(one, fused, atol=1e-6)


def test_pretrained_backbone_weights_load_offline_from_the_weights_folder(tmp_path: Path, monkeypatch):
    from torchvision.models import resnet

    weights = resnet.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(3)
    body = resnet.resnet18()
    torch.save(body.state_dict(), tmp_path / Path(weights.url).name)  # torchvision's own file name
    monkeypatch.setenv("COMPKIT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))  # nothing cached: a download would be needed
    model = registry.get().model("tv-det/fasterrcnn_resnet18_fpn", 1, 3, pretrained=True, image_size=(SIZE, SIZE))
    loaded = model.backbone.body.layer3[0].conv1.weight
    assert torch.equal(loaded, body.layer3[0].conv1.weight)
    assert not model.backbone.body.conv1.weight.requires_grad and loaded.requires_grad  # stem frozen, as torchvision


def test_without_weights_or_internet_the_error_says_where_to_put_them(tmp_path: Path, monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setenv("COMPKIT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(CompkitError, match="resnet18-f37072fd.pth.*COMPKIT_WEIGHTS_DIR"):
        registry.get().model("tv-det/fcos_resnet18_fpn64", 1, 3, pretrained=True)


def test_accumulation_clipping_ema_and_resume_train_a_detector_as_any_model(tmp_path: Path):
    images, targets = squares(12)
    train = ArrayDataset(images, targets, TASK.compose([A.HorizontalFlip(p=0.5), A.Normalize()]), task=TASK)
    valid = ArrayDataset(*squares(4, seed=1), TASK.compose([A.Normalize()]), task=TASK)

    def fit(out_dir: Path, epochs: int, resume: bool = False) -> dict:
        torch.manual_seed(0)
        model = registry.get().model("tv-det/fcos_resnet18_fpn64", 1, 3, image_size=(SIZE, SIZE))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loaders = [engine.make_loader(data, batch_size=4, train=stage == "train", num_workers=0, seed=1)
                   for data, stage in ((train, "train"), (valid, "valid"))]
        with engine.Engine(model, registry.get().loss("detector"), optimizer, task=TASK, device="cpu", quiet=True,
                           accumulate=2, clip_grad=1.0, ema=0.9) as trainer:
            return trainer.fit(*loaders, epochs=epochs, score=boxes.map50, out_dir=out_dir, resume=resume)

    straight = fit(tmp_path / "straight", 2)
    fit(tmp_path / "resumed", 1)
    resumed = fit(tmp_path / "resumed", 2, resume=True)
    assert resumed["epochs_run"] == 2 and resumed["best_score"] == pytest.approx(straight["best_score"])
    ours = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    theirs = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert ours["ema"] is not None and all(torch.allclose(ours["ema"][key].float(), value.float(), atol=1e-5)
                                           for key, value in theirs["ema"].items())


@pytest.mark.slow
def test_two_process_gloo_fit_of_a_detector_scores_every_image_once(tmp_path: Path):
    import os
    import subprocess
    import sys

    import pandas as pd

    worker = Path(__file__).with_name("_ddp_detection_worker.py")
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(worker),
               str(tmp_path)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = oof.load(tmp_path / "oof.npz")
    assert stored.ids.tolist() == [f"v{i}" for i in range(5)]  # each image once, in dataset order
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_detection_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, valid_targets = module.squares(5, 1)
    assert [float(rows[0, 1]) for rows in stored.targets] == [rows[0, 1] / SIZE for rows in valid_targets]
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    score = TASK.validation_score(boxes.map50, stored.targets, stored.probabilities())
    assert score == pytest.approx(metrics["map50"].max())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_channels_last_fit_of_a_detector(tmp_path: Path, amp):
    train = ArrayDataset(*squares(8), TASK.compose([A.HorizontalFlip(p=0.5), A.Normalize()]), task=TASK)
    valid = ArrayDataset(*squares(4, seed=1), TASK.compose([A.Normalize()]), task=TASK)
    model = registry.get().model("tv-det/fasterrcnn_resnet50_fpn_v2", 1, 3, image_size=(SIZE, SIZE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    loaders = [engine.make_loader(data, batch_size=4, train=stage == "train", num_workers=0, device="cuda")
               for data, stage in ((train, "train"), (valid, "valid"))]
    with engine.Engine(model, registry.get().loss("detector"), optimizer, task=TASK, device="cuda", amp=amp,
                       channels_last=True, clip_grad=1.0, ema=0.9, quiet=True) as trainer:
        result = trainer.fit(*loaders, epochs=2, score=boxes.map50, out_dir=tmp_path)
        predicted = trainer.predict(loaders[1], views=tta.views("flips"))
    assert result["epochs_run"] == 2 and len(predicted) == 4


def test_batchnorm_recomputation_is_refused_for_a_detector():
    model = registry.get().model("tv-det/fcos_resnet18_fpn64", 1, 3, image_size=(SIZE, SIZE))
    for options in ({"precise_bn": 10}, {"swa": 2}):
        with pytest.raises(CompkitError, match="precise_bn=0 and swa=0"):
            engine.Engine(model, registry.get().loss("detector"), task=TASK, device="cpu", **options)
