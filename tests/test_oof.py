"""Compact out-of-fold files, read in chunks: the CV and the post-processing search over them."""

from __future__ import annotations

import numpy as np
import pytest

from compkit import oof, postprocess, registry, runs
from compkit.errors import CompkitError
from compkit.pipeline import submitting


def masks_and_probabilities(images: int = 24, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Squares as masks (a third of the images empty) and noisy probabilities around them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), np.float32)
    for i in range(images):
        if i % 3:
            y, x, side = rng.integers(0, size // 2, 3)
            masks[i, y:y + side + 3, x:x + side + 3] = 1
    noise = rng.random(masks.shape, dtype=np.float32)
    probabilities = np.clip(0.65 * masks + 0.5 * noise ** 3 + 0.05 * rng.random(masks.shape), 0, 1)
    return masks, probabilities.astype(np.float32)


def test_dense_oof_is_stored_in_two_bytes_a_pixel_and_read_on_indexing(tmp_path, monkeypatch):
    monkeypatch.setattr(oof, "SMALL_MEMBER", 1000)
    masks, probabilities = masks_and_probabilities()
    oof.write(tmp_path / "oof.npz", [f"i{k}" for k in range(24)], probabilities, masks, epoch=3)
    stored = np.load(tmp_path / "oof.npz")
    assert stored["probabilities"].dtype == stored["targets"].dtype == np.uint8
    assert int(stored["epoch"]) == 3 and oof.stored_epoch(tmp_path / "oof.npz") == 3
    loaded = oof.load(tmp_path / "oof.npz")
    assert isinstance(loaded.raw_probabilities, oof.Stored) and isinstance(loaded.targets, oof.Stored)
    assert loaded.nbytes == 2 * probabilities.size
    assert loaded.ids.tolist() == [f"i{k}" for k in range(24)]
    np.testing.assert_array_equal(np.asarray(loaded.targets), masks.astype(np.uint8))
    assert np.abs(loaded.probabilities() - probabilities).max() <= 0.5 / 255 + 1e-7  # within quantisation


def test_per_sample_oof_keeps_float16_and_soft_dense_targets_stay_float(tmp_path):
    probabilities = np.random.default_rng(0).dirichlet(np.ones(4), 10).astype(np.float32)
    oof.write(tmp_path / "a.npz", range(10), probabilities, np.arange(10) % 4)
    stored = oof.load(tmp_path / "a.npz")
    assert stored.raw_probabilities.dtype == np.float16 and stored.targets.tolist() == (np.arange(10) % 4).tolist()
    soft = np.full((3, 4, 4), 0.3, np.float32)
    oof.write(tmp_path / "b.npz", range(3), soft, soft)
    assert oof.load(tmp_path / "b.npz").targets.dtype == np.float16


def test_chunks_cover_the_chosen_rows_in_order(tmp_path, monkeypatch):
    masks, probabilities = masks_and_probabilities(images=10, size=8)
    oof.write(tmp_path / "oof.npz", range(10), probabilities, masks)
    monkeypatch.setattr(oof, "CHUNK_PIXELS", 3 * 64)  # three images a chunk
    monkeypatch.setattr(oof, "SMALL_MEMBER", 100)  # read from the file
    loaded = oof.load(tmp_path / "oof.npz")
    chunks = list(loaded.chunks())
    assert [len(t) for t, _ in chunks] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([p for _, p in chunks]), loaded.probabilities())
    rows = np.array([0, 2, 3, 4, 9])
    picked = np.concatenate([t for t, _ in loaded.chunks(rows)])
    np.testing.assert_array_equal(picked, masks[rows].astype(np.uint8))
    assert isinstance(loaded.targets, oof.Stored)
    np.testing.assert_array_equal(loaded.targets[7], masks[7].astype(np.uint8))
    np.testing.assert_array_equal(loaded.targets[1:8:3], masks[1:8:3].astype(np.uint8))


def test_an_oof_file_of_the_old_float16_format_still_reads(tmp_path):
    masks, probabilities = masks_and_probabilities(images=4, size=8)
    np.savez(tmp_path / "oof.npz", ids=np.arange(4).astype(str), probabilities=probabilities.astype(np.float16),
             targets=masks.astype(np.float16))
    loaded = oof.load(tmp_path / "oof.npz")
    np.testing.assert_array_equal(loaded.probabilities(), probabilities.astype(np.float16).astype(np.float32))
    assert oof.stored_epoch(tmp_path / "oof.npz") is None


def test_a_damaged_oof_file_is_named(tmp_path):
    (tmp_path / "oof.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CompkitError, match="oof.npz is damaged"):
        oof.load(tmp_path / "oof.npz")
    with pytest.raises(CompkitError, match="train that fold first"):
        oof.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("triple", [False, True])
def test_the_chunked_search_chooses_what_the_whole_stack_search_chooses(monkeypatch, triple):
    masks, probabilities = masks_and_probabilities(images=30)
    whole = postprocess.search(probabilities, masks, triple=triple)
    monkeypatch.setattr(postprocess, "CHUNK_PIXELS", 7 * 32 * 32)  # 7 images a chunk: 5 chunks, the last short
    assert postprocess.search(probabilities, masks, triple=triple) == whole


def test_quantised_oof_chooses_the_same_post_processing(tmp_path):
    masks, probabilities = masks_and_probabilities(images=60, seed=1)
    exact = postprocess.search(probabilities, masks, triple=True)
    oof.write(tmp_path / "oof.npz", range(60), probabilities, masks)
    stored = oof.load(tmp_path / "oof.npz")
    quantised = postprocess.search_chunks(stored.chunks(), triple=True)
    assert {k: v for k, v in quantised.items() if k != "score"} == {k: v for k, v in exact.items() if k != "score"}
    assert quantised["score"] == pytest.approx(exact["score"], abs=2e-3)


def test_the_cv_of_a_dice_competition_is_computed_in_chunks_and_equals_the_whole(tmp_path, monkeypatch):
    comp = registry.get().competition("siim")
    assert comp.image_scores() is not None
    stacks = [masks_and_probabilities(images=9, seed=k) for k in range(2)]
    for k, (masks, probabilities) in enumerate(stacks):
        (tmp_path / f"fold{k}").mkdir()
        oof.write(tmp_path / f"fold{k}" / "oof.npz", range(9), probabilities, masks)
    monkeypatch.setattr(oof, "CHUNK_PIXELS", 2 * 32 * 32)
    cv = runs.cross_validation(comp, tmp_path, [0, 1])
    stored = [oof.load(tmp_path / f"fold{k}" / "oof.npz") for k in range(2)]
    targets = np.concatenate([np.asarray(s.targets) for s in stored])
    assert cv["score"] == comp.score(targets, np.concatenate([s.probabilities() for s in stored]))
    assert cv["folds"][1] == comp.score(np.asarray(stored[1].targets), stored[1].probabilities())


def test_the_search_sample_reads_the_chosen_rows_across_folds(tmp_path):
    stacks = [masks_and_probabilities(images=5, size=8, seed=k) for k in range(3)]
    parts = []
    for k, (masks, probabilities) in enumerate(stacks):
        oof.write(tmp_path / f"{k}.npz", range(5), probabilities, masks)
        parts.append(oof.load(tmp_path / f"{k}.npz"))
    rows = np.array([1, 4, 5, 6, 13, 14])
    picked = np.concatenate([t for t, _ in submitting.sampled_chunks(parts, rows)])
    everything = np.concatenate([m for m, _ in stacks]).astype(np.uint8)
    np.testing.assert_array_equal(picked, everything[rows])
