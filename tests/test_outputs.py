"""compkit.outputs: the file-output writers round-trip, and every check refuses bad input before writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from compkit.errors import CompkitError
from compkit.outputs import (
    check_stack,
    read_tiff_stack,
    write_palette_png,
    write_png_masks,
    write_tiff_stack,
)


def _probabilities(count=5, height=24, width=40, seed=0):
    return np.random.default_rng(seed).random((count, height, width), dtype=np.float32)


def _nothing_in(folder):
    return not folder.exists() or not any(folder.iterdir())


# -- check_stack ---------------------------------------------------------------------------------


def test_check_stack_gives_the_slices_back_unchanged():
    stack = _probabilities()
    slices = check_stack(stack, count=5, shape=(24, 40), what="p")
    assert len(slices) == 5 and all(np.shares_memory(a, b) for a, b in zip(slices, stack))
    ragged = [np.zeros((3, 4)), np.ones((5, 6))]
    assert [a.shape for a in check_stack(ragged, count=2, shape=[(3, 4), (5, 6)], what="p")] == [(3, 4), (5, 6)]
    assert len(check_stack(ragged, count=2, what="p")) == 2  # shape=None: any size, each its own


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s[:4], r"test maps: 4 slice\(s\), expected 5"),
    (lambda s: [*s[:4], s[4][:, :30]], r"test maps: slice 4 \(e\) is 24x30 \(H x W\), expected 24x40"),
    (lambda s: [*s[:2], s[2][None], *s[3:]], r"slice 2 \(c\) has shape \(1, 24, 40\), expected a 2-D"),
    (lambda s: s[0], r"expected a stack of 2-D slices \(N, H, W\), got an array of shape \(24, 40\)"),
    (lambda s: [*s[:4], s[4] > 0.5], r"slice 4 \(e\) holds bool values"),
])
def test_check_stack_refuses_count_size_and_dimensions(change, message):
    with pytest.raises(CompkitError, match=message):
        check_stack(change(_probabilities()), count=5, shape=(24, 40), what="test maps", names="abcde")


def test_check_stack_names_the_pixel_with_nan_or_a_value_out_of_range():
    stack = _probabilities()
    stack[3, 7, 11] = np.nan
    with pytest.raises(CompkitError, match=r"slice 3 has 1 NaN value\(s\), the first at row 7, column 11"):
        check_stack(stack, count=5, what="p")
    stack[3, 7, 11] = 1.5
    with pytest.raises(CompkitError, match=r"slice 3 has values from .* to 1.5 \(1.5 at row 7, column 11\), "
                                           r"expected 0 to 1"):
        check_stack(stack, count=5, what="p")
    stack[3, 7, 11] = -np.inf
    with pytest.raises(CompkitError, match="row 7, column 11"):
        check_stack(stack, count=5, what="p")
    stack[3, 7, 11] = 2.0
    assert len(check_stack(stack, count=5, low=0, high=2, what="p")) == 5  # the bounds are the caller's


def test_check_stack_refuses_a_bad_shape_argument():
    with pytest.raises(CompkitError, match=r"shape must be \(H, W\) or one \(H, W\) per slice \(5\)"):
        check_stack(_probabilities(), count=5, shape=[(24, 40)] * 4, what="p")


# -- TIFF stacks ---------------------------------------------------------------------------------


def test_tiff_stack_round_trips_at_float32_precision_in_slice_order(tmp_path):
    stack = np.random.default_rng(1).random((7, 33, 20))  # float64 in: float32 out
    path = write_tiff_stack(tmp_path / "probabilities.tif", stack)
    back = read_tiff_stack(path)
    assert back.dtype == np.float32 and back.shape == (7, 33, 20)
    np.testing.assert_array_equal(back, stack.astype(np.float32))
    with Image.open(path) as image:  # one file, one page per slice, 32-bit float pages
        assert image.n_frames == 7 and image.mode == "F" and image.size == (20, 33)
    assert [p.name for p in tmp_path.iterdir()] == ["probabilities.tif"]  # no temporary left beside it


def test_tiff_stack_of_one_slice_and_a_list_of_slices(tmp_path):
    one = write_tiff_stack(tmp_path / "one.tif", _probabilities(count=1))
    assert read_tiff_stack(one).shape == (1, 24, 40)
    slices = list(_probabilities(count=3))
    np.testing.assert_array_equal(read_tiff_stack(write_tiff_stack(tmp_path / "list.tif", slices)), np.stack(slices))


def test_tiff_stack_replaces_an_old_file_only_when_complete(tmp_path):
    path = write_tiff_stack(tmp_path / "p.tif", _probabilities(count=2))
    bad = list(_probabilities(count=3))
    bad[2] = bad[2][:10]
    with pytest.raises(CompkitError, match=r"every page one size\): slice 2 is 10x40"):
        write_tiff_stack(path, bad)
    nan = _probabilities(count=3)
    nan[1, 0, 0] = np.nan
    with pytest.raises(CompkitError, match="NaN"):
        write_tiff_stack(path, nan)
    with pytest.raises(CompkitError, match="no slices"):
        write_tiff_stack(path, [])
    assert read_tiff_stack(path).shape == (2, 24, 40)  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif"]


def test_read_tiff_stack_says_what_is_wrong_with_the_file(tmp_path):
    with pytest.raises(CompkitError, match="missing"):
        read_tiff_stack(tmp_path / "none.tif")
    (tmp_path / "text.tif").write_text("not a tiff")
    with pytest.raises(CompkitError, match="not a TIFF"):
        read_tiff_stack(tmp_path / "text.tif")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(CompkitError, match="is a PNG image, not a TIFF"):
        read_tiff_stack(tmp_path / "grey.png")
    grey = [Image.fromarray(np.full((4, 6), value, np.uint8)) for value in (3, 200)]
    grey[0].save(tmp_path / "grey.tif", save_all=True, append_images=grey[1:])
    back = read_tiff_stack(tmp_path / "grey.tif")  # 8-bit pages stay uint8
    assert back.dtype == np.uint8 and back[:, 0, 0].tolist() == [3, 200]


# -- PNG masks -----------------------------------------------------------------------------------


def test_png_masks_are_uint8_0_255_cut_at_the_threshold(tmp_path):
    probabilities = _probabilities(count=3)
    paths = write_png_masks(tmp_path / "masks", ["0", "1", "10"], probabilities, threshold=0.3)
    assert [p.name for p in paths] == ["0.png", "1.png", "10.png"]
    for path, probability in zip(paths, probabilities):
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (40, 24)
            np.testing.assert_array_equal(np.asarray(image), np.where(probability > 0.3, 255, 0))
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["0.png", "1.png", "10.png"]


def test_png_masks_can_be_written_inverted(tmp_path):
    probability = np.array([[0.2, 0.5, 0.9]], np.float32)
    (path,) = write_png_masks(tmp_path, ["m"], [probability], above=0, below=255)
    assert np.asarray(Image.open(path)).tolist() == [[255, 255, 0]]


@pytest.mark.parametrize(("names", "edit", "message"), [
    (["a", "b"], None, r"2 slice\(s\), expected 2|3 slice\(s\), expected 2"),
    (["a", "b", "a"], None, "'a' appears twice"),
    (["a", "../b", "c"], None, r"'../b' is not a plain file name"),
    (["a", ".b", "c"], None, r"'.b' is not a plain file name"),
    (["a", "b", "c"], "nan", r"slice 1 \(b\) has 1 NaN"),
    (["a", "b", "c"], "range", r"slice 2 \(c\) has values from .* to 1.01"),
])
def test_png_masks_refuse_bad_input_before_writing_any(tmp_path, names, edit, message):
    probabilities = _probabilities(count=3)
    if edit == "nan":
        probabilities[1, 2, 3] = np.nan
    elif edit == "range":
        probabilities[2, 0, 0] = 1.01
    with pytest.raises(CompkitError, match=message):
        write_png_masks(tmp_path / "masks", names, probabilities)
    assert _nothing_in(tmp_path / "masks")


# -- palette PNGs --------------------------------------------------------------------------------


def _voc_like_palette(classes=21):
    """The Pascal VOC colour map (bit-interleaved class index), as d2l lists it."""
    colours = []
    for index in range(classes):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.append((r, g, b))
    return colours


@pytest.mark.parametrize("form", ["flat", "array"])
def test_palette_png_reads_back_the_same_indices_and_palette(tmp_path, form):
    colours = _voc_like_palette()
    assert colours[1] == (128, 0, 0) and colours[15] == (192, 128, 128)  # aeroplane, person
    palette = [value for colour in colours for value in colour] if form == "flat" else np.array(colours)
    indices = np.random.default_rng(2).integers(0, 21, size=(30, 45)).astype(np.int64)
    indices[0, 0], indices[-1, -1] = 0, 20  # the first and the last colour, at the first and last pixel
    path = write_palette_png(tmp_path / "2007_000032.png", indices, palette)
    with Image.open(path) as image:
        assert image.mode == "P" and image.size == (45, 30)
        np.testing.assert_array_equal(np.asarray(image), indices)
        assert image.getpalette()[:63] == [value for colour in colours for value in colour]
        rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[-1, -1]) == colours[20]


@pytest.mark.parametrize(("indices", "palette", "message"), [
    (np.full((4, 4), 3), [0, 0, 0, 128, 0, 0], r"values from 3 to 3 .*expected 0 to 1"),
    (np.full((4, 4), -1), [0, 0, 0], "expected 0 to 0"),
    (np.zeros((4, 4), np.float32), [0, 0, 0], "are float32, expected integers"),
    (np.zeros((2, 4, 4), np.uint8), [0, 0, 0], r"shape \(2, 4, 4\), expected a 2-D"),
    (np.zeros((4, 4), np.uint8), [0, 0, 0, 1], "flat list of 3\\*K values"),
    (np.zeros((4, 4), np.uint8), [[0, 0, 300]], "integers 0-255"),
    (np.zeros((4, 4), np.uint8), np.zeros((257, 3), int), "1 <= K <= 256"),
])
def test_palette_png_refuses_bad_input_before_writing(tmp_path, indices, palette, message):
    with pytest.raises(CompkitError, match=message):
        write_palette_png(tmp_path / "x.png", indices, palette)
    assert _nothing_in(tmp_path)


def test_write_png_round_trips_grey_and_rgb_and_refuses_other_arrays(tmp_path):
    from compkit.outputs import write_png

    grey = np.random.default_rng(3).integers(0, 256, size=(9, 7), dtype=np.uint8)
    rgb = np.random.default_rng(4).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(write_png(tmp_path / "grey.png", grey))), grey)
    np.testing.assert_array_equal(np.asarray(Image.open(write_png(tmp_path / "rgb.png", rgb))), rgb)
    for bad in (grey.astype(np.float32), rgb[..., :2], np.zeros((2, 2, 2, 3), np.uint8)):
        with pytest.raises(CompkitError, match="expected a uint8 \\(H, W\\) or \\(H, W, 3\\) array"):
            write_png(tmp_path / "bad.png", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.png", "rgb.png"]
