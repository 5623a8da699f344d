"""The training data stream: batches loaded ahead by worker processes are the batches the
training process would load itself, in order, with the position a checkpoint needs."""

from __future__ import annotations

import os
from dataclasses import asdict

import pytest
import torch

from tpcli.errors import DataError
from tpcli.train.batches import Batches, DataPosition, Sampler


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
