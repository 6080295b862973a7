"""The core's own plugin: timm and smp model families, the common losses, clear errors for bad names."""

import os
import subprocess
import sys

import pytest
import torch

from compkit import registry
from compkit.errors import CompkitError


@pytest.fixture(scope="module")
def reg():
    return registry.get()


def test_timm_family_builds_any_timm_model_with_the_asked_outputs_and_channels(reg):
    model = reg.model("timm/resnet10t", num_classes=4, in_channels=1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("family", ["unet", "fpn", "unetplusplus"])
def test_smp_families_build_segmentation_models(reg, family):
    model = reg.model(f"{family}/resnet18", num_classes=1, in_channels=1).eval()
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize(("name", "match"), [
    ("timm/resnet_nope", "unknown timm model 'resnet_nope'; close matches: .*resnet"),
    ("unet/resnet_nope", "unknown encoder 'resnet_nope'"),
    ("nosuch/x", "unknown model family 'nosuch'.*available: .*timm/..."),
])
def test_unknown_models_list_what_exists(reg, name, match):
    with pytest.raises(CompkitError, match=match):
        reg.model(name, num_classes=2)


def test_unknown_loss_lists_the_registered_ones(reg):
    with pytest.raises(CompkitError, match="unknown loss 'dicee'; available: .*bce-dice"):
        reg.loss("dicee")


def test_pretrained_weights_offline_say_how_to_provide_them(tmp_path):
    # a fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported
    code = ("from compkit import registry\n"
            "try:\n    registry.get().model('timm/resnet10t', num_classes=2, pretrained=True)\n"
            "except Exception as error:\n    print(type(error).__name__, error)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # an empty cache
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.startswith("CompkitError could not load pretrained weights for timm/resnet10t")
    assert "COMPKIT_WEIGHTS_DIR" in result.stdout


def test_an_unreachable_hub_fails_at_once_instead_of_retrying(reg, monkeypatch, tmp_path):
    import huggingface_hub.constants

    from compkit import builtins

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    calls = []
    monkeypatch.setattr(builtins, "_hub_reachable", lambda: calls.append(1) or False)
    with pytest.raises(CompkitError, match="COMPKIT_WEIGHTS_DIR"):
        reg.model("timm/resnet10t", num_classes=2, pretrained=True)
    assert calls == [1]
    assert not huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE")  # put back


def test_weights_dir_supplies_pretrained_weights_offline(reg, monkeypatch, tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", pretrained=False)
    save_file(source.state_dict(), tmp_path / "resnet10t.safetensors")
    monkeypatch.setenv("COMPKIT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = reg.model("timm/resnet10t", num_classes=3, pretrained=True)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)  # the body came from the file
    assert model.get_classifier().out_features == 3  # the head was made anew for 3 classes


@pytest.mark.parametrize("name", ["ce", "ce-smooth", "focal"])
def test_classification_losses_take_class_indices_and_are_finite(reg, name):
    logits = torch.randn(6, 4, requires_grad=True)
    loss = reg.loss(name)(logits, torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["bce", "dice", "bce-dice", "focal"])
def test_mask_losses_are_small_for_the_right_answer_and_large_for_the_wrong_one(reg, name):
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:10, 4:10] = 1
    right = reg.loss(name)((target * 2 - 1) * 10, target)
    wrong = reg.loss(name)((1 - target * 2) * 10, target)
    assert right < 0.05 < wrong


def test_dice_loss_of_an_empty_mask_predicted_empty_is_near_zero(reg):
    assert reg.loss("dice")(torch.full((1, 1, 8, 8), -20.0), torch.zeros(1, 1, 8, 8)) < 1e-3


def test_cross_entropy_accepts_soft_targets(reg):
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    soft = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(reg.loss("ce")(logits, soft), expected)


def test_pulled_weights_are_found_offline_for_timm_and_smp(tmp_path, monkeypatch):
    import segmentation_models_pytorch as smp
    import timm
    import torch
    from click.testing import CliRunner

    from compkit import builtins
    from compkit.cli import cli

    # what the hub would give, without a network: weights made here, distinguishable from a fresh init
    real_create, real_encoder = timm.create_model, smp.encoders.get_encoder
    torch.manual_seed(123)
    reference = {"timm": real_create("resnet10t"), "smp": real_encoder("resnet18")}
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: reference["timm"]
                        if pretrained else real_create(name, **kw))
    monkeypatch.setattr(smp.encoders, "get_encoder", lambda name, weights=None, **kw: reference["smp"]
                        if weights else real_encoder(name, **kw))
    result = CliRunner().invoke(cli, ["weights", "pull", "timm/resnet10t", "unet/resnet18", "--to", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet10t.safetensors", "smp-resnet18.safetensors"]
    monkeypatch.setattr(timm, "create_model", real_create)
    monkeypatch.setattr(smp.encoders, "get_encoder", real_encoder)
    monkeypatch.setattr(builtins, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("COMPKIT_WEIGHTS_DIR", str(tmp_path))
    classifier = builtins.timm_model("resnet10t", num_classes=3, pretrained=True)
    expected = reference["timm"].state_dict()
    assert torch.equal(classifier.state_dict()["conv1.0.weight"], expected["conv1.0.weight"])
    unet = builtins.smp_family("Unet")("resnet18", num_classes=1, in_channels=1, pretrained=True)
    encoder = reference["smp"].state_dict()
    assert torch.equal(unet.encoder.state_dict()["layer4.1.conv2.weight"], encoder["layer4.1.conv2.weight"])
    assert unet.encoder.conv1.weight.shape[1] == 1  # the first conv adapted to one channel, as smp does
    assert torch.allclose(unet.encoder.conv1.weight[:, 0], encoder["conv1.weight"].sum(1))


def test_a_loss_factory_gets_the_config_and_competition_it_asks_for():
    from compkit import registry
    from compkit.config import Config

    reg = registry.get()
    comp = reg.competition("digits")
    seen = {}

    def weighted(config, competition):
        seen["args"] = (config.lr, competition.name)
        return torch.nn.CrossEntropyLoss(weight=torch.ones(competition.num_classes))

    reg.losses["weighted-test"] = weighted
    try:
        loss = reg.loss("weighted-test", config=Config(lr=0.25), competition=comp)
    finally:
        del reg.losses["weighted-test"]
    assert seen["args"] == (0.25, "digits") and loss.weight.shape == (10,)
    assert isinstance(reg.loss("ce", config=Config(), competition=comp), torch.nn.CrossEntropyLoss)  # factory()
