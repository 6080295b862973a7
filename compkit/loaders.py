"""Data loading for the Engine: per-epoch, per-sample seeding, DDP-aware samplers, thread counts.

A sample's augmentation depends only on (seed, epoch, index), never on worker count or history,
so a resumed run replays an epoch exactly and validation shards are never padded.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from compkit import _distributed
from compkit.errors import CompkitError


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*values: int) -> int:
    """A well-mixed 32-bit seed from integers such as (seed, epoch); numpy's legacy seeding needs < 2**32."""
    return int(np.random.SeedSequence([value % 2**64 for value in values]).generate_state(1)[0])


class EpochSampler(Sampler):
    """This process's sample indices for one epoch, yielded as ``(index, sample_seed)`` pairs.

    Order and seeds are functions of (seed, epoch) only, never of worker count or history, so a
    resumed run replays an epoch exactly. ``shuffle``: a new permutation each epoch, cut to an equal
    share per process (a tail that does not divide evenly is dropped) so every process runs the same
    number of batches. Otherwise: in order, every ``world_size``-th index from ``rank``, unpadded, so
    each sample is predicted exactly once; ``indices()`` tells the Engine how to put shards back.

    ``weights`` (training only): each epoch draws ``size`` indices with replacement, with probability
    proportional to the weights (a class-balanced sampler), cut between processes like a permutation;
    a row drawn twice gets a different sample seed each time.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 weights: np.ndarray | None = None) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.weights = None
        if weights is not None:
            if not shuffle:
                raise CompkitError("sample weights are for training (a shuffled epoch); valid and test loaders "
                                   "visit every row once")
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (size,) or not np.all(np.isfinite(weights)) or (weights < 0).any() or not weights.sum():
                raise CompkitError(f"sample weights must be {size} finite non-negative numbers, not all 0; got "
                                   f"shape {weights.shape}")
            self.weights = weights / weights.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def indices(self) -> np.ndarray:
        """int64 (M,): the dataset indices this process visits this epoch, in order."""
        if not self.shuffle:
            return np.arange(self.rank, self.size, self.world_size)
        return self._epoch_order()[self._mine()]

    def _epoch_order(self) -> np.ndarray:
        """The whole epoch's indices, for every process alike: a permutation, or the weighted draw."""
        generator = np.random.default_rng([self.seed % 2**64, self.epoch, 0])
        if self.weights is None:
            return generator.permutation(self.size)
        return generator.choice(self.size, size=self.size, replace=True, p=self.weights)

    def _mine(self) -> slice:
        share = self.size // self.world_size
        return slice(self.rank, share * self.world_size, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = np.random.SeedSequence([self.seed % 2**64, self.epoch, 1]).generate_state(self.size)
        if self.weights is not None:  # by position in the epoch's draw: a repeated row is augmented anew
            positions = np.arange(self.size)[self._mine()]
            for index, position in zip(self._epoch_order()[self._mine()].tolist(), positions.tolist()):
                yield index, int(seeds[position])
            return
        for index in self.indices().tolist():
            yield index, int(seeds[index])

    def __len__(self) -> int:
        if self.shuffle:
            return self.size // self.world_size
        return len(range(self.rank, self.size, self.world_size))


def _seed_sample(dataset: Dataset, seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    _seed_transform(dataset, seed)


def _seed_transform(dataset: Dataset, seed: int) -> None:
    # albumentations >= 2 keeps its own generators, drawn from OS entropy unless Compose(seed=...),
    # so global seeding alone does not repeat augmentations: reseed a dataset's Compose too.
    for owner in (dataset, getattr(dataset, "transforms", None), getattr(dataset, "transform", None)):
        if callable(getattr(owner, "set_random_state", None)):  # albumentations' cheap path
            owner.set_random_state(np.random.default_rng(seed), random.Random(seed))
            return
        if callable(getattr(owner, "set_random_seed", None)):
            owner.set_random_seed(seed)
            return


def randomness(dataset: Dataset) -> str:
    """Where ``dataset``'s items draw random numbers from: "none", "transform" (only the generators of
    its albumentations transform) or "any" (also the global ones). Datasets say so with a
    ``randomness()`` method (compkit's ArrayDataset does); any other dataset counts as "any"."""
    method = getattr(dataset, "randomness", None)
    return method() if callable(method) else "any"


class SeededDataset(Dataset):
    """Wraps ``dataset`` so each sample is drawn under its own seed from ``EpochSampler``.

    The same sample then gets the same augmentation whichever worker loads it, and with persistent
    workers too. Keys may also be plain indices (no reseeding). What is seeded follows
    ``randomness(dataset)``: nothing for a fixed dataset; in a worker, only the transform's generators
    when nothing else draws (a worker's global generators serve only its dataset); otherwise the
    global generators as well.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.randomness = randomness(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple) or self.randomness == "none":
            return self.dataset[key[0] if isinstance(key, tuple) else key]
        index, seed = key
        if get_worker_info() is not None:
            if self.randomness == "transform":
                _seed_transform(self.dataset, seed)
            else:
                _seed_sample(self.dataset, seed)
            return self.dataset[index]
        # Loading in the main process (num_workers=0): leave the model's torch stream (dropout) as it
        # was, so a run gives the same weights whatever num_workers is. The global numpy stream stays
        # seeded per sample as before: batch transforms (timm's Mixup) draw from it.
        state = torch.get_rng_state()
        try:
            _seed_sample(self.dataset, seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, which containers and taskset narrow."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers per process: this process's share of the usable cores, at most 8."""
    return max(1, min(8, usable_cores() // _distributed.local_world_size()))


# torch's intra-op thread count when this module was imported, and the last one choose_threads set:
# a count that is neither was set by the user.
_STARTING_THREADS = torch.get_num_threads()
_chosen_threads: int | None = None
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def main_threads(workers: int) -> int:
    """torch threads for the main process: its share of the usable cores (os.sched_getaffinity, split
    between torchrun's local processes), whatever the number of ``workers`` (one thread each).

    Not fewer next to workers: on CPU the thread count changes float rounding, so a run would no
    longer give the same weights whatever num_workers is, and on an idle 2-core machine one thread
    next to two mostly idle workers was 0.64x as fast (bench/threads.py; 2.3x faster only while
    another process held a core).
    """
    return max(1, usable_cores() // _distributed.local_world_size())


def user_chose_threads() -> bool:
    """True when the user set torch's thread count: OMP_NUM_THREADS or MKL_NUM_THREADS in the
    environment, or a torch.set_num_threads call after compkit.loaders was imported (the count is
    then neither torch's starting one nor compkit's last choice). A call made before that import
    looks like torch's own default: set OMP_NUM_THREADS instead."""
    if any(os.environ.get(name, "").strip() for name in THREAD_VARIABLES):
        return True
    return torch.get_num_threads() not in (_STARTING_THREADS, _chosen_threads)


def choose_threads(workers: int) -> int:
    """Give the main process ``main_threads(workers)`` torch threads, unless the user chose; returns
    the count in use.

    torch's default counts every core of the machine, not those this process may use (a container's
    or torchrun's share): more OpenMP threads than cores wait at every barrier for a descheduled
    sibling (a U-Net step on a loaded 2-core machine took 2.49 s with the default against 0.105 s with
    one thread). Each DataLoader worker runs one thread.
    """
    global _chosen_threads
    if not user_chose_threads():
        _chosen_threads = main_threads(workers)
        torch.set_num_threads(_chosen_threads)
    return torch.get_num_threads()


def one_thread_per_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread in each worker, so the workers and the main
    process together use each core once."""
    # torch's worker loop does this too; said here so compkit does not depend on it. OpenCV's pool is
    # left alone: cv2.setNumThreads in a forked worker waits forever on the parent's pool.
    torch.set_num_threads(1)


class ThreadedLoader(DataLoader):
    """A DataLoader that sets the main process's torch threads for its workers each time it is iterated."""

    def __iter__(self) -> Any:
        choose_threads(self.num_workers)
        return super().__iter__()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A torch.device from "auto" | "cpu" | "cuda" | "cuda:N" | "mps"; under torchrun "auto"/"cuda" is
    cuda:LOCAL_RANK. Any other name, or a device this machine lacks, is an error saying what exists."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise CompkitError(f"device {name!r} is not a device name: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CompkitError(
            f"device {name!r} was asked for but torch sees no CUDA device; use device=auto or cpu"
        )
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise CompkitError(f"device {name!r} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CompkitError("device 'mps' was asked for but torch sees no Apple GPU; use device=auto or cpu")
    if name == "cuda":
        return torch.device("cuda", _distributed.local_rank())
    return torch.device(name)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int = -1,
    seed: int = 0,
    device: str | torch.device = "auto",
    weights: np.ndarray | None = None,
    drop_last: bool | None = None,
) -> DataLoader:
    """A DataLoader of dict batches; shuffled and without a short last batch when ``train``.

    Under torchrun each process gets its share (see ``EpochSampler``). ``num_workers=-1`` picks
    ``default_workers()``. On CUDA, memory is pinned and workers persist between epochs. Each worker
    runs one thread; iterating the loader gives the main process its usable cores (``choose_threads``).
    Valid and test loaders over a dataset with ``normalized_in_batches`` (compkit's ArrayDataset with
    a fixed transform ending in Normalize) normalise whole batches instead of each image. ``weights``:
    per-row sampling weights of a training loader (``EpochSampler``). ``drop_last``: whether a training
    loader drops its last partial batch (default: yes); a last batch of one sample is dropped anyway, since
    BatchNorm cannot train on it.
    """
    sampler = EpochSampler(
        len(dataset),
        shuffle=train,
        seed=seed,
        rank=_distributed.rank(),
        world_size=_distributed.world_size(),
        weights=weights,
    )
    workers = default_workers() if num_workers < 0 else num_workers
    on_cuda = resolve_device(device).type == "cuda"
    dataset, collate = _batched(dataset) if not train else (dataset, getattr(dataset, "collate", None))
    return ThreadedLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and (drop_last is not False or _one_left(len(sampler), batch_size)),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=on_cuda,
        persistent_workers=on_cuda and workers > 0,
        worker_init_fn=one_thread_per_worker,
        # Workers' base seed comes from here instead of the global stream; samples are reseeded anyway.
        generator=torch.Generator().manual_seed(seed),
    )


def _one_left(samples: int, batch_size: int) -> bool:
    """Would the last batch hold a single sample?"""
    return samples % batch_size == 1


def _batched(dataset: Dataset) -> tuple[Dataset, Any]:
    """(dataset, collate_fn): the dataset's batch-normalising variant when it has one, else as is."""
    method = getattr(dataset, "normalized_in_batches", None)
    split = method() if callable(method) else None
    return split if split is not None else (dataset, getattr(dataset, "collate", None))
