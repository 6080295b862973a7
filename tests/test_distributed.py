"""DDP tests: the per-process samplers, shard merging, and a real 2-process gloo fit under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from compkit import engine

WORKER = Path(__file__).with_name("_ddp_worker.py")


def shards(size: int, world_size: int, *, shuffle: bool, epoch: int = 1) -> list[np.ndarray]:
    samplers = [
        engine.EpochSampler(size, shuffle=shuffle, seed=3, rank=rank, world_size=world_size)
        for rank in range(world_size)
    ]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [sampler.indices() for sampler in samplers]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_shards_are_equal_disjoint_and_reshuffled_each_epoch(world_size):
    parts = shards(23, world_size, shuffle=True)
    assert {len(part) for part in parts} == {23 // world_size}  # same batch count on every process
    together = np.concatenate(parts)
    assert len(set(together.tolist())) == len(together)
    assert not np.array_equal(together, np.concatenate(shards(23, world_size, shuffle=True, epoch=2)))
    again = np.concatenate(shards(23, world_size, shuffle=True))
    assert np.array_equal(together, again)  # a function of (seed, epoch) only


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_evaluation_shards_hold_every_sample_exactly_once(world_size):
    together = np.concatenate(shards(11, world_size, shuffle=False))
    assert sorted(together.tolist()) == list(range(11))  # unpadded: no duplicate rows


def test_sampler_yields_the_same_sample_seed_for_a_sample_on_any_rank():
    alone = dict(iter(engine.EpochSampler(10, shuffle=False, seed=3)))
    split = [engine.EpochSampler(10, shuffle=False, seed=3, rank=rank, world_size=2) for rank in range(2)]
    assert {index: seed for sampler in split for index, seed in sampler} == alone


def test_merge_puts_shards_back_in_dataset_order():
    parts = shards(7, 2, shuffle=False)
    predictions = [
        engine.Predictions(probabilities=part.astype(np.float32)[:, None], targets=part * 10, indices=part)
        for part in parts
    ]
    merged = engine._merge(predictions)
    assert merged.probabilities[:, 0].tolist() == list(range(7))
    assert merged.targets.tolist() == [10 * i for i in range(7)]


def test_two_process_gloo_fit_writes_once_and_scores_every_sample_once(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(WORKER),
        str(tmp_path),
        "--epochs",
        "2",
    ]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert (tmp_path / "callback_rank0.txt").read_text().count("\n") == 2
    assert not (tmp_path / "callback_rank1.txt").exists()  # on_epoch_end runs on rank 0 only
    oof = np.load(tmp_path / "oof.npz")
    assert sorted(oof["ids"].tolist()) == sorted(f"v{i}" for i in range(21))  # each id once, none padded
    assert oof["ids"].tolist() == [f"v{i}" for i in range(21)]  # and in dataset order
    assert oof["targets"].tolist() == [i % 3 for i in range(21)]
    accuracy = float((oof["probabilities"].astype(np.float32).argmax(1) == oof["targets"]).mean())
    assert accuracy == metrics["accuracy"].max()
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["best_score"] == accuracy
    assert not list(tmp_path.glob(".*.tmp"))
