"""Tests for compkit.loaders' thread counts: one per worker, the rest of the usable cores for the main process."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from compkit import loaders


class Threads(Dataset):
    """Item: the torch thread count of the process that loads it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return torch.get_num_threads()


@pytest.fixture(autouse=True)
def threads(monkeypatch):
    """torch's count as it is now stands for torch's default; restored afterwards."""
    before = torch.get_num_threads()
    for name in loaders.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(loaders, "_STARTING_THREADS", before)
    monkeypatch.setattr(loaders, "_chosen_threads", None)
    monkeypatch.setattr(loaders, "usable_cores", lambda: 5)
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize("workers", [0, 1, 2, 5, 9])
def test_the_main_process_gets_the_usable_cores_whatever_the_workers(workers, monkeypatch):
    assert loaders.main_threads(workers) == 5
    assert loaders.choose_threads(workers) == 5 == torch.get_num_threads()
    monkeypatch.setattr(loaders._distributed, "local_world_size", lambda: 2)  # two torchrun processes share them
    assert loaders.main_threads(workers) == 2


def test_compkit_changes_its_own_choice_again(monkeypatch):
    loaders.choose_threads(4)
    monkeypatch.setattr(loaders, "usable_cores", lambda: 3)  # the affinity changed
    assert loaders.choose_threads(0) == 3


def test_an_environment_variable_is_respected(monkeypatch, threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert loaders.user_chose_threads()
    assert loaders.choose_threads(2) == threads


def test_a_set_num_threads_call_is_respected(threads):
    torch.set_num_threads(threads + 1)
    assert loaders.user_chose_threads()
    assert loaders.choose_threads(2) == threads + 1


def test_iterating_a_loader_chooses_for_its_workers():
    loader = loaders.make_loader(Threads(), batch_size=1, train=False, num_workers=1)
    assert loader.worker_init_fn is loaders.one_thread_per_worker
    loaded = [int(batch) for batch in loader]
    assert loaded == [1, 1]  # in the worker
    assert torch.get_num_threads() == 5  # in the main process: the 5 usable cores
    list(loaders.make_loader(Threads(), batch_size=1, train=False, num_workers=0))
    assert torch.get_num_threads() == 5
