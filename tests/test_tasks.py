"""Tasks as modules: the core asks the task, multi-class segmentation end to end in the Engine, metrics
against independent implementations, TTA per class channel, and a plugin's own task."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, jaccard_score
from torch import nn

from compkit import Competition, engine, metrics, oof, tasks, tta
from compkit.errors import CompkitError
from compkit.registry import Registry

PACKAGE = Path(__file__).resolve().parents[1] / "compkit"
NAMES = {task.name for task in tasks.BUILTIN}


class Voc(Competition):
    name = "mc-test"
    task = "multiclass-segmentation"
    classes = ("background", "cat", "dog")
    metric = "miou"


class Tags(Competition):
    name = "ml-test"
    task = "multilabel"
    classes = ("a", "b", "c")


def item(target, size=(4, 6), channels=3):
    return {"image": torch.zeros(channels, *size), "target": target}


def test_no_task_name_is_compared_outside_the_task_modules():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "tasks" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                constants = [part.value for part in ast.walk(node) if isinstance(part, ast.Constant)]
                if any(value in NAMES for value in constants):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, f"task names compared in {found}"


def test_a_name_and_an_instance_give_the_same_task_and_unknown_names_say_what_exists():
    assert tasks.get("segmentation") is tasks.get(tasks.get("segmentation"))
    siim_like = tasks.Segmentation(triple_threshold=True)
    assert tasks.get(siim_like) is siim_like and siim_like.triple_threshold
    with pytest.raises(CompkitError, match="unknown task .keypoints..*multiclass-segmentation"):
        tasks.get("keypoints")


def test_model_outputs_and_activations_come_from_the_task():
    assert Voc().num_classes == 3 and Voc().activation == "softmax"
    assert Tags().num_classes == 3 and Tags().activation == "sigmoid"

    class Binary(Competition):
        name, task, classes = "b", "segmentation", ("thing",)

    assert Binary().num_classes == 1


@pytest.mark.parametrize(("competition", "target", "message"), [
    (Tags(), torch.tensor(1), "multilabel: an item's target must be float32 \\(3,\\)"),
    (Voc(), torch.zeros(3, 4, 6), "int64 \\[4, 6\\] map"),  # a 3-channel map smuggled in as "multilabel"-like
    (Voc(), torch.full((4, 6), 7, dtype=torch.int64), "class 7, outside 0..2"),
    (Voc(), torch.zeros(4, 5, dtype=torch.int64), "int64 \\[4, 6\\]"),
])
def test_items_that_do_not_fit_the_task_are_refused(competition, target, message):
    with pytest.raises(CompkitError, match=message):
        competition.kind.check_item(item(target), competition)


def test_a_21_channel_softmax_map_cannot_pass_as_classification():
    class Sneaky(Competition):
        name, task, classes = "sneaky", "classification", tuple(f"c{i}" for i in range(21))

    with pytest.raises(CompkitError, match="classification: an item's target"):
        Sneaky().kind.check_item(item(torch.zeros(21, 4, 6)), Sneaky())


def test_fitting_items_pass_and_the_ignore_index_is_allowed():
    target = torch.zeros(4, 6, dtype=torch.int64)
    target[0] = 255
    Voc().kind.check_item(item(target), Voc(), (4, 6))
    Tags().kind.check_item(item(torch.tensor([0.0, 1.0, 1.0])), Tags())
    with pytest.raises(CompkitError, match="expected 8x8"):
        Voc().kind.check_item(item(target), Voc(), (8, 8))


def random_maps(rng, n=6, classes=4, size=(9, 7)):
    targets = rng.integers(0, classes, (n, *size))
    targets[rng.random(targets.shape) < 0.1] = 255
    probabilities = rng.dirichlet(np.ones(classes), size=(n, *size)).transpose(0, 3, 1, 2)
    return targets, probabilities


def test_miou_and_pixel_accuracy_equal_sklearn_with_the_ignore_index_left_out():
    rng = np.random.default_rng(0)
    targets, probabilities = random_maps(rng)
    predicted = probabilities.argmax(axis=1)
    keep = targets != 255
    present = np.union1d(targets[keep], predicted[keep])
    expected = jaccard_score(targets[keep], predicted[keep], labels=present, average="macro")
    assert metrics.miou(targets, probabilities) == pytest.approx(expected)
    assert metrics.miou(targets, predicted.astype(np.uint8)) == pytest.approx(expected)  # class indices too
    assert metrics.pixel_accuracy(targets, probabilities) == pytest.approx(accuracy_score(targets[keep],
                                                                                           predicted[keep]))


def test_miou_is_computed_in_chunks_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(1)
    targets, probabilities = random_maps(rng, n=10)
    whole = metrics.miou(targets, probabilities)
    monkeypatch.setattr(metrics, "CHUNK_PIXELS", 9 * 7 * 4)  # one image per chunk
    assert metrics.miou(targets, probabilities) == pytest.approx(whole)


def test_miou_by_hand_on_a_tiny_case_and_errors():
    targets = np.array([[[0, 0, 1, 255]]])
    predicted = np.array([[[0, 1, 1, 0]]])
    # class 0: intersection 1, union 2; class 1: intersection 1, union 2 -> 0.5; the 255 pixel is not scored
    assert metrics.miou(targets, predicted) == pytest.approx(0.5)
    assert metrics.pixel_accuracy(targets, predicted) == pytest.approx(2 / 3)
    with pytest.raises(CompkitError, match="same images"):
        metrics.miou(targets, predicted[:, :, :2])
    with pytest.raises(CompkitError, match="ignore index"):
        metrics.miou(np.full((1, 2, 2), 255), np.zeros((1, 2, 2), dtype=int))


def test_the_competition_scores_with_its_own_ignore_index():
    class Other(Voc):
        ignore_index = 9

    targets = np.array([[[0, 9, 1]]])
    predicted = np.array([[[0, 1, 1]]])
    assert Other().score(targets, predicted) == pytest.approx(1.0)
    assert Voc().score(np.array([[[0, 255, 1]]]), predicted) == pytest.approx(1.0)


def test_ce_skips_ignored_pixels_and_dice_is_smp_multiclass():
    from compkit import registry

    reg = registry.get()
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[:, 0] = 255
    loss = reg.loss("ce", competition=Voc())(logits, target)
    keep = target != 255
    expected = nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    torch.testing.assert_close(loss, expected)
    dice = reg.loss("dice", competition=Voc())
    assert type(dice).__module__.startswith("segmentation_models_pytorch") and dice.ignore_index == 255
    assert torch.isfinite(dice(logits, target))


def channel_sensitive(images: torch.Tensor) -> torch.Tensor:
    """Three class maps, each a different orientation-sensitive function of the image."""
    mean = images.mean(dim=1, keepdim=True)
    maps = torch.cat([mean.cumsum(-1), mean.cumsum(-2), (mean * torch.arange(mean.shape[-1])).cumsum(-1)], 1)
    return maps.softmax(dim=1)


@pytest.mark.parametrize("mode", ["hflip", "flips", "d4"])
def test_tta_inverts_every_view_for_every_class_channel(mode):
    images = torch.rand(2, 3, 6, 6)
    views = tta.views(mode)
    expected = torch.stack([view.inverse(channel_sensitive(view.forward(images))) for view in views]).mean(0)
    merged = tta.predict(channel_sensitive, images, views, dense=True)
    assert merged.shape == (2, 3, 6, 6)
    torch.testing.assert_close(merged, expected)
    assert not torch.allclose(merged, channel_sensitive(images), atol=1e-4)  # the views mattered


class Pixels(torch.utils.data.Dataset):
    """Images whose class per pixel is given by its colour channel (learnable), with ignored borders."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, 3, (n, 8, 8), generator=generator)
        self.images = nn.functional.one_hot(self.targets, 3).permute(0, 3, 1, 2).float()
        self.images += 0.3 * torch.randn(self.images.shape, generator=generator)
        self.targets[:, 0] = 255

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "target": self.targets[index]}


def test_the_engine_trains_multiclass_segmentation_and_keeps_class_indices_out_of_fold(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    train = engine.make_loader(Pixels(32, 0), batch_size=8, train=True, num_workers=0)
    valid = engine.make_loader(Pixels(12, 1), batch_size=8, train=False, num_workers=0)
    trainer = engine.Engine(model, nn.CrossEntropyLoss(ignore_index=255), optimizer, task="multiclass-segmentation",
                            device="cpu", quiet=True)
    result = trainer.fit(train, valid, epochs=3, score=metrics.miou, metric="miou", out_dir=tmp_path)
    assert result["best_score"] > 0.9  # the colour gives the class
    with np.load(tmp_path / "oof.npz") as stored:
        assert stored["probabilities"].dtype == np.uint8 and stored["probabilities"].shape == (12, 8, 8)
        assert "scale" not in stored.files  # class indices, not quantised probabilities
        assert stored["targets"].dtype == np.uint8 and (stored["targets"][:, 0] == 255).all()
        assert stored["probabilities"].max() <= 2
    saved = oof.load(tmp_path / "oof.npz")
    assert metrics.miou(np.asarray(saved.targets), saved.probabilities()) == pytest.approx(result["best_score"])
    assert trainer.predict(valid).shape == (12, 3, 8, 8)  # predictions keep every class's probability


def test_a_plugin_registers_a_task_of_its_own():
    from compkit import builtins, hookimpl, plugins

    class Ordinal(tasks.Classification):
        name = "ordinal"

    class Plugin:
        @hookimpl
        def register_tasks(self, register):
            register(Ordinal())

    manager = plugins.Manager()
    manager.add("compkit", builtins, "compkit", "0")
    manager.add("ordinal", Plugin(), "compkit-ordinal", "1.0")
    registry = Registry(manager)
    assert isinstance(registry.task("ordinal"), Ordinal) and registry.task("segmentation").dense
    assert manager.plugins["ordinal"].tasks == ["ordinal"]
    assert "multiclass-segmentation" in manager.plugins["compkit"].tasks


def test_a_task_that_is_not_a_task_is_refused_at_registration():
    from compkit import builtins, hookimpl, plugins

    class Plugin:
        @hookimpl
        def register_tasks(self, register):
            register("segmentation")

    manager = plugins.Manager()
    manager.add("compkit", builtins, "compkit", "0")
    manager.add("bad", Plugin(), "compkit-bad", "1.0")
    Registry(manager)
    assert "Task instance" in (manager.plugins["bad"].error or "")
