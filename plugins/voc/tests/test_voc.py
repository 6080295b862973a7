"""The voc plugin: the shared contract, the palette and its decoding, the devkit tables and the official
split, the transforms, d2l's FCN, the palette PNG outputs, the download, and a demo run end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tomllib
from PIL import Image

from compkit import registry
from compkit.errors import CompkitError
from compkit.testing import CompetitionContract, demo_fixtures, end_to_end

NAME = "voc"


class TestVoc(CompetitionContract):
    name = NAME
    module = "compkit_voc"
    overrides = {"crop_height": 64, "crop_width": 96}  # noqa: RUF012 - small crops, fast on CPU

    def item_size(self, config):
        return (config.crop_height, config.crop_width)  # training items are random crops, not resized


competition, root = demo_fixtures(NAME)

# d2l's VOC_COLORMAP (13.9), class by class: the palette must be the same table
D2L_COLOURS = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
               [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128], [192, 0, 128],
               [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0], [128, 192, 0], [0, 64, 128]]


# -- the palette and label decoding ---------------------------------------------------------------


def test_the_palette_is_the_vocs_with_the_outline_at_255():
    from compkit_voc.layout import BORDER, PALETTE

    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    assert PALETTE[:21].tolist() == D2L_COLOURS
    assert BORDER == (224, 224, 192) and len({tuple(colour) for colour in PALETTE.tolist()}) == 256


def _label_picture(indices: np.ndarray) -> np.ndarray:
    from compkit_voc.layout import PALETTE

    return PALETTE[indices]


@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_label_pngs_decode_to_class_indices_and_the_outline_to_ignore(tmp_path, mode):
    from compkit_voc.layout import PALETTE, read_label

    rng = np.random.default_rng(0)
    indices = rng.choice([*range(21), 255], size=(37, 53)).astype(np.uint8)
    indices[0, 0], indices[-1, -1] = 20, 255  # the first and last pixel too
    path = tmp_path / "label.png"
    if mode == "RGB":
        Image.fromarray(_label_picture(indices)).save(path)
    else:
        picture = Image.fromarray(indices, mode="P")
        picture.putpalette(PALETTE.flatten().tolist())
        picture.save(path)
    decoded = read_label(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (37, 53)
    np.testing.assert_array_equal(decoded, indices)
    assert read_label(path)[0, 0] == 20 and (decoded == 255).sum() == (indices == 255).sum()


def test_known_colours_map_to_their_classes():
    from compkit_voc.layout import decode_colours

    rgb = np.array([[[0, 0, 0], [128, 0, 0], [192, 128, 128], [0, 64, 128], [224, 224, 192]]], dtype=np.uint8)
    assert decode_colours(rgb, "x.png").tolist() == [[0, 1, 15, 20, 255]]  # background, aeroplane, person, tv


def test_an_unknown_colour_is_an_error_naming_the_file_and_the_pixel(tmp_path):
    from compkit.outputs import write_palette_png
    from compkit_voc.layout import PALETTE, read_label

    picture = _label_picture(np.zeros((6, 9), dtype=np.uint8))
    picture[4, 7] = (10, 20, 30)
    path = tmp_path / "2007_000032.png"
    Image.fromarray(picture).save(path)
    with pytest.raises(CompkitError, match=r"2007_000032.png: pixel \(x=7, y=4\) has colour \(10, 20, 30\).*1 pixels"):
        read_label(path)
    indices = np.zeros((6, 9), dtype=np.uint8)
    indices[2, 5] = 30  # a palette entry whose colour is no class's
    palette = PALETTE.copy()
    palette[30] = (10, 20, 30)
    write_palette_png(path, indices, palette)
    with pytest.raises(CompkitError, match=r"2007_000032.png: pixel \(x=5, y=2\) has colour \(10, 20, 30\)"):
        read_label(path)
    palette[30] = PALETTE[15]  # another palette, the same colours: person
    write_palette_png(path, indices, palette)
    assert read_label(path)[2, 5] == 15
    path.write_bytes(b"not a png")
    with pytest.raises(CompkitError, match="cannot decode label .*2007_000032.png"):
        read_label(path)


# -- tables, split, transforms ------------------------------------------------------------------------


def test_tables_are_the_lists_and_the_test_set_is_val_with_its_labels(competition, root):
    train, test = competition.train_table(root), competition.test_table(root)
    assert train["split"].value_counts().to_dict() == {"train": 24, "val": 12}
    listed = (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    assert test["id"].tolist() == listed and (test["split"] == "val").all()
    assert all((root / path).is_file() for path in [*train["path"], *train["mask"]])
    first = train.iloc[0]
    assert Image.open(root / first["path"]).size == (first["width"], first["height"])
    targets = competition.test_targets(root)
    assert targets.shape == (12, 128, 128) and targets.dtype == np.uint8  # 100 px at most -> 128
    dataset = competition.dataset(test, root, "valid", competition.defaults)
    np.testing.assert_array_equal(targets, np.stack([dataset[i]["target"].numpy() for i in range(12)]))


def test_the_split_is_the_official_one(competition, root):
    table = competition.train_table(root)
    folds = competition.fixed_split(table, root)
    assert folds.tolist() == [-1] * 24 + [0] * 12
    np.testing.assert_array_equal(folds == 0, table["split"] == "val")


def test_layout_errors_name_the_file_and_what_to_run(competition, tmp_path):
    from compkit_voc.demo import write_demo

    with pytest.raises(CompkitError, match="ImageSets/Segmentation/train.txt is missing.*compkit download voc"):
        competition.train_table(tmp_path)
    write_demo(tmp_path, 0)
    label = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2012_000003.png"
    label.rename(label.with_suffix(".gone"))
    with pytest.raises(CompkitError, match="train.txt, line 3: id '2012_000003' has no label .*2012_000003.png"):
        competition.train_table(tmp_path)
    label.with_suffix(".gone").rename(label)
    val = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    val.write_text("../../escape\n")
    with pytest.raises(CompkitError, match=r"val.txt, line 1: '../../escape' is not an image id"):
        competition.test_table(tmp_path)


def test_train_items_are_random_crops_padded_with_ignore(competition, root):
    config = competition.defaults.replace(crop_height=96, crop_width=64)
    table = competition.train_table(root)
    small = table[(table["height"] < 96)].head(1)  # shorter than the crop: padded, not dropped
    item = competition.dataset(small, root, "train", config)[0]
    assert item["image"].shape == (3, 96, 64) and item["target"].shape == (96, 64)
    target = item["target"].numpy()
    assert target.dtype == np.int64 and set(np.unique(target)) <= {0, 1, 8, 15, 255}
    rows_in_pad = 96 - int(small["height"].iloc[0])
    assert (target == 255).all(axis=1).sum() >= rows_in_pad


def test_valid_items_are_padded_top_left_and_keep_every_pixel(competition, root):
    from compkit_voc.layout import read_label

    table = competition.test_table(root)
    row = table.iloc[0]
    item = competition.dataset(table.head(1), root, "valid", competition.defaults)[0]
    assert item["image"].shape == (3, 128, 128)
    target = item["target"].numpy()
    height, width = int(row["height"]), int(row["width"])
    np.testing.assert_array_equal(target[:height, :width], read_label(root / row["mask"]))
    assert (target[height:] == 255).all() and (target[:, width:] == 255).all()
    assert "target" not in competition.dataset(table.head(1), root, "test", competition.defaults)[0]


def test_crops_must_fit_the_stride(competition):
    assert competition.defaults.replace(crop_height=96).crop_height == 96
    with pytest.raises(CompkitError, match="'crop_width' must be a positive multiple of 32.*got 100"):
        competition.defaults.replace(crop_width=100)


def test_defaults_are_the_sources_recipe_and_the_demo_recipe_is_small(competition):
    config = competition.defaults
    assert (config.model, config.pretrained, config.loss, competition.metric) == ("fcn/resnet18", True, "ce", "miou")
    assert (config.optimizer, config.momentum, config.epochs, config.batch_size) == ("sgd", 0.0, 5, 32)
    # d2l sums the batch's losses; the kit means them: the same step is lr x batch, wd / batch
    assert config.lr == pytest.approx(1e-3 * 32) and config.weight_decay == pytest.approx(1e-3 / 32)
    assert (config.crop_height, config.crop_width, config.scheduler) == (320, 480, "none")
    assert competition.task == "multiclass-segmentation" and len(competition.classes) == 21
    assert competition.output_files and competition.sample_submission is None
    demo = tomllib.loads(competition.recipes()["demo"].read_text())
    assert demo["model"].startswith("fcn/") and not demo["pretrained"] and demo["crop_height"] <= 64


# -- d2l's FCN ------------------------------------------------------------------------------------------


def _transposed(channels: int):
    import torch

    from compkit_voc.fcn import KERNEL, PADDING, STRIDE, bilinear_kernel

    layer = torch.nn.ConvTranspose2d(channels, channels, KERNEL, stride=STRIDE, padding=PADDING, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, channels, KERNEL))
    return layer


def test_the_bilinear_kernel_upsamples_a_constant_image_to_a_constant():
    import torch

    with torch.no_grad():
        out = _transposed(3)(torch.full((1, 3, 4, 5), 2.5))
    assert out.shape == (1, 3, 128, 160)
    inside = out[..., 16:-16, 16:-16]  # within 16 px of the border fewer inputs reach a pixel (as in d2l)
    torch.testing.assert_close(inside, torch.full_like(inside, 2.5))


def test_the_bilinear_kernel_is_bilinear_interpolation_and_keeps_channels_apart():
    import torch
    import torch.nn.functional as F

    from compkit_voc.fcn import bilinear_kernel

    image = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = _transposed(3)(image)
    expected = F.interpolate(image, scale_factor=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 16:-16, 16:-16], expected[..., 16:-16, 16:-16])
    weight = bilinear_kernel(3, 3, 64)
    assert weight[0, 1].abs().sum() == 0 and weight[2, 2].sum() == pytest.approx(32 * 32)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (320, 480), (100, 70)])
def test_the_fcn_gives_a_map_the_size_of_its_input(size):
    import torch

    model = registry.get().model("fcn/resnet18", 21, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 21, *size)


def test_the_fcn_is_d2ls_resnet18_body_1x1_conv_and_bilinear_transposed_conv():
    import torch

    from compkit_voc.fcn import bilinear_kernel

    model = registry.get().model("fcn/resnet18", 21, pretrained=False)
    final, transposed = model.segmentation_head.final_conv, model.segmentation_head.transpose_conv
    assert (final.in_channels, final.out_channels, final.kernel_size) == (512, 21, (1, 1))
    assert (transposed.kernel_size, transposed.stride, transposed.padding) == ((64, 64), (32, 32), (16, 16))
    torch.testing.assert_close(transposed.weight, bilinear_kernel(21, 21, 64))
    assert transposed.bias.abs().sum() == 0
    assert not any(name.startswith(("fc", "global_pool")) and p.numel() for name, p in model.body.named_parameters())


def test_pretrained_weights_come_from_the_weights_dir_offline(tmp_path, monkeypatch):
    import timm
    import torch
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False)
    save_file({key: value.contiguous() for key, value in source.state_dict().items()},
              str(tmp_path / "resnet18.safetensors"))
    monkeypatch.setenv("COMPKIT_WEIGHTS_DIR", str(tmp_path))
    model = registry.get().model("fcn/resnet18", 21, pretrained=True)
    torch.testing.assert_close(model.body.conv1.weight, source.conv1.weight)


def test_a_body_at_another_stride_is_refused():
    with pytest.raises(CompkitError, match="fcn/vit_tiny_patch16_224: the FCN needs a body .* stride 32.*gives 16"):
        registry.get().model("fcn/vit_tiny_patch16_224", 21, pretrained=False)


# -- outputs, report, download ---------------------------------------------------------------------------


def _maps(table: pd.DataFrame, size: int = 128, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 21, (size, size)).astype(np.uint8) for _ in range(len(table))]


def test_outputs_are_palette_pngs_cropped_to_each_image(competition, root, tmp_path):
    from compkit_voc.layout import PALETTE, read_label

    table = competition.test_table(root)
    maps = _maps(table)
    written = competition.write_files(table, maps, tmp_path)
    assert sorted(path.name for path in written) == sorted(f"{image_id}.png" for image_id in table["id"])
    for (_, row), indices in zip(table.iterrows(), maps):
        path = tmp_path / f"{row['id']}.png"
        with Image.open(path) as picture:
            assert picture.mode == "P" and picture.size == (row["width"], row["height"])
            assert np.asarray(picture.getpalette()[:63]).reshape(21, 3).tolist() == PALETTE[:21].tolist()
        np.testing.assert_array_equal(read_label(path), indices[:row["height"], :row["width"]])


@pytest.mark.parametrize(("change", "message"), [
    (lambda maps: maps[:-1], "11 predicted maps for 12 test images"),
    (lambda maps: [maps[0][:20, :20], *maps[1:]], r"is 20x20, smaller than its image"),
    (lambda maps: [np.full_like(maps[0], 21), *maps[1:]], "holds 21, not a class index 0..20"),
    (lambda maps: [maps[0].astype(np.float32), *maps[1:]], "must be a 2-D map of class indices"),
])
def test_bad_outputs_are_refused_before_any_file_is_written(competition, root, tmp_path, change, message):
    table = competition.test_table(root)
    with pytest.raises(CompkitError, match=message):
        competition.write_files(table, change(_maps(table)), tmp_path)
    assert not any(tmp_path.iterdir())


def test_report_gives_miou_pixel_accuracy_and_each_class(competition):
    targets = np.array([[[0, 0, 1, 1], [0, 0, 1, 255]]], dtype=np.uint8)
    predicted = np.array([[[0, 0, 1, 0], [0, 8, 1, 8]]], dtype=np.uint8)
    lines = competition.report(targets, predicted).splitlines()
    # background 3 / 5, aeroplane 2 / 3, cat 0 / 1 (predicted, never a target); the outline pixel unscored
    assert lines[0].startswith("out-of-fold mIoU ") and "pixel accuracy 0.71429 on 1 images" in lines[0]
    assert [line.split()[-1] for line in lines[2:]] == ["0.6000", "0.6667", "0.0000"]
    assert [line.split()[0] for line in lines[2:]] == ["background", "aeroplane", "cat"]


def test_download_fetches_the_checked_tarball_from_the_organisers(competition, tmp_path, monkeypatch):
    from compkit import kaggle
    from compkit_voc.demo import write_demo

    calls = []

    def url(address, root, sha1=None, sha256=None, filename=None, force=False):
        calls.append((address, sha1))
        write_demo(root, 1)  # what the tarball unpacks to
        return root

    monkeypatch.setattr(kaggle, "url", url)
    competition.download(tmp_path)
    assert calls == [("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                      "4e443f8a2eca6b1dac8a6c57641b67dd40621a49")]
    assert len(competition.test_table(tmp_path)) == 12


# -- end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_run_beats_all_background_and_writes_palette_pngs(tmp_path, monkeypatch):
    from compkit import console
    from compkit_voc.layout import PALETTE, read_label

    printed = []
    for module in (console,):
        real = module.echo
        monkeypatch.setattr(module, "echo", lambda message, real=real: (printed.append(message), real(message)))
    comp = registry.get().competition(NAME)
    demo = tomllib.loads(comp.recipes()["demo"].read_text())
    settings = [f"{key}={value}".lower() for key, value in demo.items() if key != "num_workers"]
    result = end_to_end(NAME, tmp_path, *settings, "precise_bn=0")  # precise_bn: tests/_cli.py's fast flags
    assert result.oof["targets"].shape == (12, 128, 128)  # the val list, padded to a multiple of 32
    assert result.best_score > result.baseline + 0.1  # the baseline: every pixel background
    output = "\n".join(printed)
    assert "out-of-fold mIoU" in output and "IoU per class" in output
    # the test set is the val list and best.pt the last epoch: the same images, the same model, the same score
    assert result.sidecar["test_score"] == pytest.approx(result.metrics["miou"].iloc[-1], abs=1e-6)
    test = comp.test_table(tmp_path / "data" / NAME)
    assert result.sidecar["files"] == sorted(f"{image_id}.png" for image_id in test["id"])
    for _, row in test.iterrows():
        path = result.submission / f"{row['id']}.png"
        with Image.open(path) as picture:
            assert picture.mode == "P" and picture.size == (row["width"], row["height"])
            assert picture.getpalette()[:63] == PALETTE[:21].flatten().tolist()
        assert set(np.unique(read_label(path))) <= set(range(21))
