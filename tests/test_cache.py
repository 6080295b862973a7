"""The resized-input cache: built once, reused, rebuilt when the sources or the size change."""

import os

import cv2
import numpy as np
import pytest

from compkit.cache import CHUNK, chunks, resized_images


def write_images(folder, count=5, size=(40, 30)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_cache_matches_direct_decoding_and_is_reused(tmp_path):
    paths = write_images(tmp_path)
    calls = []

    def read(path):
        calls.append(path)
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)

    images = resized_images(paths, 16, tmp_path / "cache", read=read, progress=False)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    expected = cv2.resize(read(paths[2]), (16, 16), interpolation=cv2.INTER_AREA)
    assert np.array_equal(images[2], expected)
    calls.clear()
    again = resized_images(paths, 16, tmp_path / "cache", read=read, progress=False)
    assert calls == [] and np.array_equal(again, images)  # nothing decoded the second time


def test_cache_is_rebuilt_when_a_source_changes_and_stale_files_go(tmp_path):
    paths = write_images(tmp_path)
    first = np.array(resized_images(paths, 16, tmp_path / "cache", progress=False))
    cv2.imwrite(str(paths[0]), np.zeros((40, 30, 3), np.uint8))
    os.utime(paths[0], ns=(1, 1))  # a different mtime even on coarse clocks
    second = resized_images(paths, 16, tmp_path / "cache", progress=False)
    assert second[0].max() == 0 and np.array_equal(second[1:], first[1:])
    assert len(list((tmp_path / "cache").glob("images-16-*.npy"))) == 1
    resized_images(paths[:2], 16, tmp_path / "cache", progress=False)  # another list, same name and size
    assert len(list((tmp_path / "cache").glob("images-16-*.npy"))) == 2  # neither evicts the other
    other_size = resized_images(paths, 8, tmp_path / "cache", progress=False)
    assert other_size.shape == (5, 8, 8, 3)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


def test_grayscale_cache_has_no_channel_axis(tmp_path):
    paths = write_images(tmp_path, 2)
    images = resized_images(paths, 12, tmp_path / "cache", channels=1, progress=False)
    assert images.shape == (2, 12, 12)


def test_a_fold_reads_its_rows_of_a_full_table_cache(tmp_path):
    from compkit.cache import rows_of
    from compkit.datasets import ArrayDataset
    from compkit.errors import CompkitError

    images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
    rows = rows_of(["a", "b", "c", "d", "e"], ["d", "b"])
    assert rows.tolist() == [3, 1]
    dataset = ArrayDataset(images, [0, 1], None, rows=rows)
    assert len(dataset) == 2 and np.array_equal(dataset[0]["image"][0].numpy(), images[3])
    assert np.array_equal(dataset.selected_images(), images[[3, 1]])
    with pytest.raises(CompkitError, match="not in the competition's table"):
        rows_of(["a"], ["z"])


def test_a_memmap_backed_dataset_pickles_as_its_file_name(tmp_path):
    import pickle

    from compkit.datasets import ArrayDataset

    images = resized_images(write_images(tmp_path, 3), 16, tmp_path / "cache", progress=False)
    dataset = ArrayDataset(images, [0, 1, 2], None, rows=np.array([2, 0]))
    payload = pickle.dumps(dataset)
    assert len(payload) < images.nbytes  # not the pixels
    again = pickle.loads(payload)
    assert np.array_equal(again[0]["image"].numpy(), dataset[0]["image"].numpy())


@pytest.mark.parametrize(("count", "threads"), [(0, 2), (1, 8), (7, 2), (100, 3), (10_000, 8)])
def test_files_are_cut_into_chunks_that_cover_each_once(count, threads):
    pieces = chunks(count, threads)
    assert [index for piece in pieces for index in piece] == list(range(count))
    assert all(1 <= len(piece) <= CHUNK for piece in pieces)
    assert len(pieces) >= min(count, 4 * threads)  # every thread has work to the end


def test_a_cache_built_in_chunks_by_several_threads_matches_one_thread(tmp_path):
    paths = write_images(tmp_path, 11)
    one = np.array(resized_images(paths, 16, tmp_path / "one", workers=1, progress=False))
    several = resized_images(paths, 16, tmp_path / "several", workers=3, progress=False)
    expected = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (16, 16), interpolation=cv2.INTER_AREA)
                for p in paths]  # fmt: skip
    assert np.array_equal(one, several) and np.array_equal(several, np.stack(expected))
