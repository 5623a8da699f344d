"""The training data stream: batches loaded ahead by worker processes are the batches the
training process would load itself, in order, with the position a checkpoint needs."""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import pytest
import torch

from tpcli.errors import DataError, TpError
from tpcli.train.batches import (Batches, BucketSampler, DataPosition, Sampler,
                                 padding_waste)


class EpochDataset:
    """Example i of epoch e is [e, i, pid]: which epoch it was read in, and by which process."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.epoch = n, fail_at, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i == self.fail_at:
            raise DataError(f"example {i} is corrupt", hint="preprocess the corpus again")
        return {"x": torch.tensor([self.epoch, i, os.getpid()])}

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {"x": torch.stack([e["x"] for e in examples])}


def stream(workers: int, steps: int, size: int, pos: DataPosition, rank: int = 0,
           world: int = 1, n: int = 10) -> tuple[list[torch.Tensor], list[dict], set[int]]:
    """(epoch, index) of each batch, the position after each, and the pids that loaded them."""
    with Batches(Sampler(EpochDataset(n), 3, pos, rank, world), size, workers) as batches:
        got, where, pids = [], [], set()
        for _ in range(steps):
            x = batches.next()["x"]
            got.append(x[:, :2])
            where.append(asdict(batches.pos))
            pids |= set(x[:, 2].tolist())
    return got, where, pids


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_workers_load_what_the_process_would_across_epochs(rank: int, world: int) -> None:
    # 10 examples, batches of 4: epochs end inside batches 3, 5 and 8
    ref, ref_pos, ref_pids = stream(0, 8, 4, DataPosition(), rank, world)
    got, pos, pids = stream(2, 8, 4, DataPosition(), rank, world)
    assert ref_pids == {os.getpid()} and os.getpid() not in pids and len(pids) >= 1
    assert [g.tolist() for g in got] == [r.tolist() for r in ref]
    assert pos == ref_pos  # consumed, not loaded ahead: workers ran further than this
    assert pos[2] == {"epoch": 1, "offset": 2}
    # every example was read with the dataset set to its own epoch, and each epoch is a
    # permutation of all 10 (rank 1 of 2 sees the second half of each batch)
    first = torch.cat(ref[:2] + [ref[2][: (2 if world == 1 else 0)]])
    assert (first[:, 0] == 0).all()
    if world == 1:
        assert sorted(torch.cat(ref)[:10, 1].tolist()) == list(range(10))
        assert (torch.cat(ref)[10:20, 0] == 1).all()


def test_resuming_at_a_saved_position_continues_the_same_stream() -> None:
    whole, where, _ = stream(1, 7, 4, DataPosition())
    rest, _, _ = stream(1, 3, 4, DataPosition(**where[3]))
    assert [r.tolist() for r in rest] == [w.tolist() for w in whole[4:]]


def test_a_worker_error_reaches_the_training_process_as_itself() -> None:
    sampler = Sampler(EpochDataset(10, fail_at=None), 3, DataPosition())
    order = sampler.next_keys(10)
    bad = order[5][1]  # the 6th example read: in the second batch of 4
    with Batches(Sampler(EpochDataset(10, fail_at=bad), 3, DataPosition()), 4, 1) as batches:
        batches.next()
        with pytest.raises(DataError) as caught:
            batches.next()
    assert str(caught.value) == (f"example {bad} is corrupt\n  hint: preprocess the corpus "
                                 "again")
    assert "raised in a data worker process" in caught.value.__notes__[0]
    assert "in __getitem__" in caught.value.__notes__[0]  # where the worker raised it


class SizedDataset(EpochDataset):
    """EpochDataset whose example i has a size (frames, tokens) of its own."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__(len(sizes))
        self._sizes = sizes

    def sizes(self) -> np.ndarray:
        return np.asarray(self._sizes)


SIZES = [int(s) for s in np.random.default_rng(0).integers(5, 120, 200)]


def test_buckets_hold_at_most_the_budget_and_every_example_once_an_epoch() -> None:
    sampler = BucketSampler(SizedDataset(SIZES), 3, DataPosition(), units=400, cap=16)
    plan = sampler.plan(0)
    sizes = np.asarray(SIZES)
    assert sorted(np.concatenate(plan).tolist()) == list(range(200))
    assert all(len(b) * sizes[b].max() <= 400 and len(b) <= 16 for b in plan)
    # similar lengths together: far less padding than batches of the same counts in random order
    shuffled = np.random.default_rng(1).permutation(200)
    counts = np.cumsum([len(b) for b in plan])[:-1]
    random_batches = np.split(shuffled, counts)
    assert padding_waste(sizes, plan) < 0.1 < padding_waste(sizes, random_batches)
    assert [b.tolist() for b in plan] == [b.tolist() for b in sampler.plan(0)]
    assert [b.tolist() for b in plan] != [b.tolist() for b in sampler.plan(1)]


def test_bucket_batches_split_over_ranks_and_resume() -> None:
    def keys(rank: int, world: int, steps: int, pos: DataPosition) -> list:
        s = BucketSampler(SizedDataset(SIZES), 3, pos, rank, world, units=400, cap=16)
        out = [s.next_keys(0) for _ in range(steps)]
        return out, s.pos

    one, _ = keys(0, 1, 60, DataPosition())  # 60 batches: past the first epoch's end
    assert {e for batch in one for e, _ in batch} == {0, 1}
    r0, _ = keys(0, 2, 30, DataPosition())
    r1, pos = keys(1, 2, 30, DataPosition())
    assert r0 == one[0::2] and r1 == one[1::2]  # a step's data does not depend on the ranks
    rest, _ = keys(0, 1, 20, DataPosition(0, 10))
    assert rest == one[10:30]


def test_bucketing_refuses_what_it_cannot_batch() -> None:
    with pytest.raises(TpError, match=r"example 1 has 500 units.*batch_units=400"):
        BucketSampler(SizedDataset([10, 500, 20]), 3, DataPosition(), units=400, cap=4)
    with pytest.raises(TpError, match="does not say its examples' sizes"):
        BucketSampler(EpochDataset(4), 3, DataPosition(), units=400, cap=4)
