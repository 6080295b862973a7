"""Tests for compkit.optim: optimizers, head learning rates, weight decay groups, schedules."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from compkit import optim
from compkit.config import Config
from compkit.errors import CompkitError


def small_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 8), nn.Linear(8, 2)
    )


def group_of(optimizer: torch.optim.Optimizer, parameter: nn.Parameter) -> dict:
    return next(group for group in optimizer.param_groups if any(p is parameter for p in group["params"]))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_optimizers_cover_every_parameter_once(name):
    model = small_model()
    optimizer = optim.build_optimizer(model, Config(optimizer=name, lr=0.01, nesterov=True))
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(list(model.parameters())) == len({id(p) for p in grouped})
    assert type(optimizer).__name__.lower() == name
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"]
    if name == "rmsprop":  # the ISBI recipe's settings reach torch
        recipe = Config(optimizer="rmsprop", lr=1e-5, weight_decay=1e-8, momentum=0.9, alpha=0.9, eps=1e-6)
        defaults = optim.build_optimizer(model, recipe).defaults
        assert (defaults["lr"], defaults["momentum"], defaults["alpha"], defaults["eps"]) == (1e-5, 0.9, 0.9, 1e-6)


def test_biases_and_norm_weights_get_no_weight_decay():
    model = small_model()
    optimizer = optim.build_optimizer(model, Config(weight_decay=0.05))
    assert group_of(optimizer, model[0].weight)["weight_decay"] == 0.05
    assert group_of(optimizer, model[0].bias)["weight_decay"] == 0.0
    assert group_of(optimizer, model[1].weight)["weight_decay"] == 0.0


def test_head_learns_at_the_multiplied_rate():
    model = small_model()
    optimizer = optim.build_optimizer(model, Config(lr=0.01, head_lr_multiplier=10.0))
    assert group_of(optimizer, model[4].weight)["lr"] == pytest.approx(0.1)  # the last Linear
    assert group_of(optimizer, model[4].bias)["lr"] == pytest.approx(0.1)
    assert group_of(optimizer, model[3].weight)["lr"] == pytest.approx(0.01)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # the body comes first
    assert len(optim.build_optimizer(model, Config(lr=0.01)).param_groups) == 2  # no split at 1x


def test_head_of_a_timm_model_and_of_an_smp_model():
    timm = pytest.importorskip("timm")
    smp = pytest.importorskip("segmentation_models_pytorch")
    network = timm.create_model("resnet18", pretrained=False, num_classes=3)
    assert {id(p) for p in optim.head_parameters(network)} == {id(p) for p in network.fc.parameters()}
    unet = smp.Unet("resnet18", encoder_weights=None, classes=1, aux_params={"classes": 2})
    expected = [*unet.segmentation_head.parameters(), *unet.classification_head.parameters()]
    assert {id(p) for p in optim.head_parameters(unet)} == {id(p) for p in expected}


def test_a_model_without_head_cannot_have_a_head_multiplier():
    with pytest.raises(CompkitError, match="no head"):
        optim.build_optimizer(nn.Conv2d(3, 3, 1), Config(head_lr_multiplier=10.0))


def lrs(config: Config, steps_per_epoch: int, scores=None) -> list[float]:
    """The body's lr at every optimizer step, driving the Schedule as the Engine does."""
    model = small_model()
    optimizer = optim.build_optimizer(model, config)
    schedule = optim.build_scheduler(optimizer, config, steps_per_epoch, higher_is_better=True)
    seen = []
    for epoch in range(config.epochs):
        for _ in range(steps_per_epoch):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(scores[epoch] if scores else 0.0)
    return seen


def test_cosine_warms_up_linearly_then_decays_to_zero():
    seen = lrs(Config(scheduler="cosine", lr=0.1, epochs=4, warmup_epochs=1.0), steps_per_epoch=5)
    warmup, decay = seen[:5], seen[5:]
    assert warmup == pytest.approx([0.1 * (i + 1) / 6 for i in range(5)])
    assert decay[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False)) and decay[-1] < 0.002


def test_one_cycle_peaks_then_anneals_with_the_head_at_its_multiple():
    config = Config(scheduler="onecycle", lr=0.1, epochs=4, head_lr_multiplier=10.0)
    model = small_model()
    optimizer = optim.build_optimizer(model, config)
    schedule = optim.build_scheduler(optimizer, config, 10)
    body, head = [], []
    for _ in range(40):
        body.append(group_of(optimizer, model[0].weight)["lr"])
        head.append(group_of(optimizer, model[4].weight)["lr"])
        optimizer.step()
        schedule.after_step()
    assert max(body) == pytest.approx(0.1) and max(head) == pytest.approx(1.0)
    assert body.index(max(body)) == 11 and body[-1] < 0.001  # rising for 30 % of the 40 steps


def test_step_schedule_decays_once_per_step_size_epochs():
    seen = lrs(Config(scheduler="step", lr=0.1, epochs=4, step_size=2, gamma=0.5), steps_per_epoch=3)
    assert seen == pytest.approx([0.1] * 6 + [0.05] * 6)


@pytest.mark.parametrize(
    ("higher_is_better", "scores"),
    [(True, [0.5, 0.6, 0.6, 0.6, 0.6, 0.6]), (False, [0.5, 0.4, 0.4, 0.4, 0.4, 0.4])],
)
def test_plateau_lowers_the_lr_when_the_metric_stalls_in_its_direction(higher_is_better, scores):
    config = Config(scheduler="plateau", lr=0.1, epochs=6, gamma=0.1)
    optimizer = optim.build_optimizer(small_model(), config)
    schedule = optim.build_scheduler(optimizer, config, 1, higher_is_better=higher_is_better)
    seen = []
    for score in scores:
        seen.append(optimizer.param_groups[0]["lr"])
        schedule.after_epoch(score)
    assert seen[:5] == pytest.approx([0.1] * 5) and seen[5] == pytest.approx(0.01)
    assert schedule.interval == "plateau" and schedule.higher_is_better == higher_is_better


def test_no_schedule_keeps_the_lr():
    assert lrs(Config(scheduler="none", lr=0.1, epochs=2), 3) == pytest.approx([0.1] * 6)


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step", "plateau"])
def test_schedule_state_survives_a_weights_only_checkpoint(name):
    config = Config(scheduler=name, lr=0.1, epochs=3, warmup_epochs=1.0)
    optimizer = optim.build_optimizer(small_model(), config)
    schedule = optim.build_scheduler(optimizer, config, 4)
    for _ in range(5):
        optimizer.step()
        schedule.after_step()
    schedule.after_epoch(0.3)
    buffer = io.BytesIO()
    torch.save({"schedule": schedule.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin_optimizer = optim.build_optimizer(small_model(), config)
    twin = optim.build_scheduler(twin_optimizer, config, 4)
    twin_optimizer.load_state_dict(saved["optimizer"])
    twin.load_state_dict(saved["schedule"])
    for _ in range(3):
        for each_optimizer, each_schedule in ((optimizer, schedule), (twin_optimizer, twin)):
            each_optimizer.step()
            each_schedule.after_step()
        assert twin_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_unknown_names_say_what_is_available():
    config = SimpleNamespace(**{**Config().to_dict(), "optimizer": "lamb", "scheduler": "poly"})
    with pytest.raises(CompkitError, match="available: adam, adamw, rmsprop, sgd .*register_optimizers"):
        optim.build_optimizer(small_model(), config)
    with pytest.raises(CompkitError, match="available: cosine"):
        optim.build_scheduler(torch.optim.SGD(small_model().parameters(), lr=0.1), config, 1)


def test_optimizer_steps_count_a_short_last_group():
    assert optim.optimizer_steps_per_epoch(10, 3) == 4
    assert optim.optimizer_steps_per_epoch(10, 1) == 10
    assert math.isclose(optim.warmup_cosine(0, 10)(10), 0.0, abs_tol=1e-12)


def test_decay_1d_decays_biases_and_norm_scales_too():
    model = small_model()
    plain = optim.build_optimizer(model, Config(weight_decay=0.1))
    everything = optim.build_optimizer(model, Config(weight_decay=0.1, decay_1d=True))
    assert {group["weight_decay"] for group in plain.param_groups} == {0.0, 0.1}
    assert [group["weight_decay"] for group in everything.param_groups] == [0.1]


def test_a_plugin_registers_an_optimizer_through_the_hook():
    from compkit import builtins, hookimpl, plugins
    from compkit.registry import Registry

    class Lion:
        @hookimpl
        def register_optimizers(self, register):
            register("sgd-plain", lambda groups, config: torch.optim.SGD(groups, lr=config.lr))

    manager = plugins.Manager()
    manager.add("compkit", builtins, "compkit", "0")
    manager.add("lion", Lion(), "compkit-lion", "1.0")
    registry = Registry(manager)
    made = registry.optimizer("sgd-plain")(optim.parameter_groups(small_model(), Config(lr=0.5)), Config(lr=0.5))
    assert isinstance(made, torch.optim.SGD) and made.defaults["momentum"] == 0
    assert manager.plugins["lion"].optimizers == ["sgd-plain"] and "rmsprop" in registry.optimizers


def test_layer_decay_gives_timm_layers_geometric_lrs_from_the_head_down():
    import timm

    model = timm.create_model("resnet10t", num_classes=10)
    config = Config(lr=1.0, layer_decay=0.5, weight_decay=0.01)
    optimizer = optim.build_optimizer(model, config)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter once
    assert lr_of[id(model.fc.weight)] == 1.0  # the head at the full lr
    assert lr_of[id(model.conv1[0].weight)] == 0.5 ** 5  # the stem five layers down
    assert lr_of[id(model.layer4[0].conv1.weight)] > lr_of[id(model.layer1[0].conv1.weight)]
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.0, 0.01}
    with pytest.raises(CompkitError, match="needs a timm model"):
        optim.build_optimizer(small_model(), config)
