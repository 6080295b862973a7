"""Tests for compkit.rle: round trips, the SIIM organisers' own algorithm, hand-computed strings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compkit import rle
from compkit.errors import CompkitError


def organisers_mask2rle(img: np.ndarray, width: int, height: int) -> str:
    """The organisers' encoder (mask_functions.py): called with the transposed 0/255 mask."""
    pairs = []
    last_color, current_pixel, run_start, run_length = 0, 0, -1, 0
    for x in range(width):
        for y in range(height):
            current_color = img[x][y]
            if current_color != last_color:
                if current_color == 255:
                    run_start, run_length = current_pixel, 1
                else:
                    pairs += [str(run_start), str(run_length)]
                    run_start, run_length, current_pixel = -1, 0, 0
            elif run_start > -1:
                run_length += 1
            last_color = current_color
            current_pixel += 1
    return " ".join(pairs)


def organisers_rle2mask(text: str, width: int, height: int) -> np.ndarray:
    """The organisers' decoder: returns (width, height); the caller transposes."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in text.split()])
    position = 0
    for start, length in zip(array[0::2], array[1::2], strict=True):
        position += start
        mask[position : position + length] = 255
        position += length
    return mask.reshape(width, height)


def organisers_encode(mask: np.ndarray) -> str:
    height, width = mask.shape
    return organisers_mask2rle((mask.T != 0) * 255, width, height)


def organisers_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    return (organisers_rle2mask(text, width, height).T != 0).astype(np.uint8)


def mask_from_flat(indices: list[int], shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) mask whose listed column-major (0-based) pixels are set."""
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    flat[indices] = 1
    return flat.reshape(shape[1], shape[0]).T


# No deadline: the CPU is shared, and a slow example is not a wrong one.
relaxed = settings(deadline=None)
shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))
masks = hnp.arrays(np.uint8, shapes, elements=st.integers(0, 1))
EMPTY = np.zeros((4, 5), dtype=np.uint8)
FULL = np.ones((4, 5), dtype=np.uint8)
CORNERS = mask_from_flat([0, 19], (4, 5))
ROW = np.array([[1, 1, 0, 1, 0, 0, 1]], dtype=np.uint8)


@pytest.mark.parametrize("relative", [False, True])
@relaxed
@given(mask=masks)
@example(mask=EMPTY)
@example(mask=FULL)
@example(mask=CORNERS)
@example(mask=ROW)
@example(mask=ROW.T.copy())
def test_round_trip(mask, relative):
    decoded = rle.decode(rle.encode(mask, relative=relative), mask.shape, relative=relative)
    assert decoded.dtype == np.uint8
    assert decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)


@relaxed
@given(mask=masks)
@example(mask=CORNERS)
@example(mask=FULL)
def test_relative_matches_organisers_encoder_except_the_final_run(mask):
    ours = rle.encode(mask, relative=True)
    theirs = organisers_encode(mask)
    if mask.T.ravel()[-1]:
        # Theirs never closes a run that reaches the last pixel: it drops that pair.
        assert ours.split()[:-2] == theirs.split()
    else:
        assert ours == theirs


@relaxed
@given(mask=masks)
@example(mask=CORNERS)
def test_decodes_organisers_strings_and_they_decode_ours(mask):
    last = mask.T.ravel()[-1]
    trimmed = organisers_decode(organisers_encode(mask), mask.shape)
    np.testing.assert_array_equal(rle.decode(organisers_encode(mask), mask.shape, relative=True), trimmed)
    if not last:
        np.testing.assert_array_equal(trimmed, mask)
    np.testing.assert_array_equal(organisers_decode(rle.encode(mask, relative=True), mask.shape), mask)


def test_siim_facts_example():
    mask = mask_from_flat([10, 11, 13, 24, 25], (5, 7))
    assert rle.encode(mask, relative=True) == "10 2 1 1 10 2"
    assert rle.encode(mask) == "11 2 14 1 25 2"


def test_pixels_are_numbered_down_columns_first():
    mask = np.array([[1, 0, 0], [1, 0, 1]], dtype=np.uint8)
    assert rle.encode(mask) == "1 2 6 1"
    assert rle.encode(mask, relative=True) == "0 2 3 1"
    np.testing.assert_array_equal(rle.decode("1 2 6 1", (2, 3)), mask)


def test_full_and_first_and_last_pixel():
    assert rle.encode(FULL) == "1 20"
    assert rle.encode(FULL, relative=True) == "0 20"
    assert rle.encode(CORNERS) == "1 1 20 1"
    assert rle.encode(CORNERS, relative=True) == "0 1 18 1"


def test_any_nonzero_is_foreground():
    assert rle.encode(np.array([[0, 255], [0.5, -3]])) == "2 3"
    assert rle.encode(np.array([[True, False]])) == "1 1"


@pytest.mark.parametrize("value", ["", "-1", " -1", "  -1  ", None, float("nan"), np.float64("nan")])
@pytest.mark.parametrize("relative", [False, True])
def test_empty_values_decode_to_zeros(value, relative):
    decoded = rle.decode(value, (3, 4), relative=relative)
    assert decoded.shape == (3, 4) and decoded.dtype == np.uint8 and not decoded.any()


def test_empty_mask_encodes_to_empty_string():
    assert rle.encode(EMPTY) == ""
    assert rle.encode(EMPTY, relative=True) == ""


def test_leading_space_of_siim_csv_values():
    np.testing.assert_array_equal(
        rle.decode(" 0 2 1 1", (2, 3), relative=True), mask_from_flat([0, 1, 3], (2, 3))
    )


@pytest.mark.parametrize(
    ("value", "relative", "words"),
    [
        ("1 2 3", False, "odd count"),
        ("1 -2", False, "negative"),
        ("0 2", False, "start"),
        ("-1 2", True, "negative start"),
        ("5 3", False, "past the end"),
        ("4 1 1 2", True, "past the end"),
        ("3 2 1 1", False, "overlap"),
        ("1 x", False, "not a list of integers"),
        ("1.5 2", False, "not a list of integers"),
    ],
)
def test_bad_strings_name_the_value(value, relative, words):
    with pytest.raises(CompkitError, match=words) as caught:
        rle.decode(value, (2, 3), relative=relative)
    assert repr(value) in str(caught.value)


def test_run_ending_exactly_at_the_last_pixel_is_valid():
    np.testing.assert_array_equal(rle.decode("5 2", (2, 3)), mask_from_flat([4, 5], (2, 3)))
    np.testing.assert_array_equal(rle.decode("4 2", (2, 3), relative=True), mask_from_flat([4, 5], (2, 3)))


def test_rejects_non_2d_masks_and_bad_shapes():
    with pytest.raises(CompkitError, match="2-D"):
        rle.encode(np.zeros((1, 2, 3)))
    with pytest.raises(CompkitError, match="shape"):
        rle.decode("1 1", (0, 3))


def test_is_empty():
    assert rle.is_empty(" -1") and rle.is_empty(None) and rle.is_empty(float("nan"))
    assert not rle.is_empty("1 1")


def test_large_masks_format_multi_digit_numbers_exactly():
    rng = np.random.default_rng(0)
    mask = (rng.random((300, 400)) < 0.002).astype(np.uint8)
    mask[:, 150:160] = 1  # long runs and 5- to 6-digit starts
    starts, lengths = [], []
    for position in np.flatnonzero(mask.T.ravel()):
        if starts and starts[-1] + lengths[-1] == position:
            lengths[-1] += 1
        else:
            starts.append(int(position))
            lengths.append(1)
    expected = " ".join(f"{start + 1} {length}" for start, length in zip(starts, lengths, strict=True))
    assert rle.encode(mask) == expected
    assert rle.encode(mask, relative=True) == organisers_encode(mask)


def numpy_encode(mask: np.ndarray, relative: bool) -> str:
    """RLE as a competitor writes it with numpy's flatnonzero: the benchmark's speed peer."""
    pixels = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1])
    starts, ends = changes[0::2], changes[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2] = starts - np.concatenate([[0], ends[:-1]]) if relative else starts + 1
    runs[1::2] = ends - starts
    return " ".join(map(str, runs.tolist()))


LAYOUTS = {
    "C order": np.ascontiguousarray,
    "Fortran order": np.asfortranarray,
    "strided view": lambda mask: np.repeat(mask, 2, axis=1)[:, ::2],
    "bool": lambda mask: mask.astype(bool),
}


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@relaxed
@given(seed=st.integers(0, 2**32 - 1), shape=st.tuples(st.integers(1, 70), st.integers(1, 70)),
       density=st.sampled_from([0.0, 0.01, 0.3, 0.5, 0.97, 1.0]))  # fmt: skip
def test_matches_the_numpy_peer_on_random_masks(seed, shape, density, layout, relative):
    # up to ~2,500 runs: past rle.SHORT_TEXT, so both ways of writing the numbers are compared
    mask = LAYOUTS[layout]((np.random.default_rng(seed).random(shape) < density).astype(np.uint8))
    expected = numpy_encode(mask, relative)
    assert rle.encode(mask, relative=relative) == expected
    np.testing.assert_array_equal(rle.decode(expected, shape, relative=relative), mask != 0)
