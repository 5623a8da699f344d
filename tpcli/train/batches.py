"""The training data stream: which examples each step reads (`Sampler`) and loading them ahead of
the step (`Batches`).

The order is a function of (seed, epoch) only and every example of (seed, epoch, index), so the
stream is the same whether batches are loaded in the training process or by worker processes,
and a checkpoint records the position of the batches the loop has *consumed*, not of those
loaded ahead: a resumed run reads exactly the examples the stopped one would have read next.
"""

from __future__ import annotations

import pickle
import queue
import threading
import traceback
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch

from tpcli.errors import TpError

Key = tuple[int, int]  # (epoch, index): what one example is a function of, with the seed


@dataclass
class DataPosition:
    """Where the sampler stands: epoch and offset into that epoch's permutation."""

    epoch: int = 0
    offset: int = 0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch `epoch`'s order (the same for every rank)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Sampler:
    """Deterministic, resumable shuffling: epoch e visits randperm(n, seed=(seed, e)).

    With `world` ranks, each `next_keys(size)` consumes `size` global examples and rank `rank`
    gets only the `rank`-th contiguous slice of them: the order does not depend on `world`."""

    def __init__(self, dataset: Any, seed: int, pos: DataPosition, rank: int = 0,
                 world: int = 1) -> None:
        self.dataset, self.seed, self.pos = dataset, seed, replace(pos)
        self.rank, self.world = rank, world
        self.n = len(dataset)
        if self.n == 0:
            raise TpError("the dataset holds no training examples",
                          hint="preprocess a larger corpus or lower the processor's seq_length")
        self._begin(self.pos.epoch)

    def _begin(self, epoch: int) -> None:
        """Set up epoch `epoch`'s order."""
        self._perm = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))

    def next_keys(self, size: int) -> list[Key]:
        """(epoch, index) of this rank's slice of the next `size` examples; moves `pos` past
        all `size` of them (the other ranks' examples are skipped, never read)."""
        per = size // self.world
        lo, hi = self.rank * per, (self.rank + 1) * per
        keys = []
        for j in range(size):
            if self.pos.offset >= self.n:
                self.pos = DataPosition(self.pos.epoch + 1, 0)
                self._begin(self.pos.epoch)
            if lo <= j < hi:
                keys.append((self.pos.epoch, int(self._perm[self.pos.offset])))
            self.pos.offset += 1
        return keys

    def next_batch(self, size: int) -> dict[str, torch.Tensor]:
        """This rank's slice of the next `size` examples (all of them for one process), loaded
        here."""
        return load_batch(self.dataset, self.next_keys(size))


class BucketSampler(Sampler):
    """Batches by size, with length bucketing (fairseq's `max_tokens`): each batch holds at
    most `units` padded units (its longest example's size times its count: frames, tokens) and
    at most `cap` examples, of similar sizes, so that little of a batch is padding.

    Epoch e's plan: every index sorted by (size, position in randperm(n, seed=(seed, e))), cut
    into batches greedily, the batches shuffled by the same generator: a function of (seed, e)
    and the sizes only. `pos.offset` counts the batches of the plan consumed. With `world` ranks
    each `next_keys` consumes `world` batches and rank r gets the r-th: the plan does not depend
    on `world`, and the data of one optimizer step is a function of the step."""

    def __init__(self, dataset: Any, seed: int, pos: DataPosition, rank: int = 0,
                 world: int = 1, *, units: int, cap: int) -> None:
        sizes = getattr(dataset, "sizes", None)
        if sizes is None:
            raise TpError(f"pretrain.batch_units batches by size, but the dataset "
                          f"({type(dataset).__name__}) does not say its examples' sizes",
                          hint="remove pretrain.batch_units (batch by pretrain.batch_size), or "
                          "use a processor whose dataset has sizes()")
        self.sizes = np.asarray(sizes(), dtype=np.int64)
        self.units, self.cap = int(units), max(1, int(cap))
        big = int(self.sizes.argmax()) if len(self.sizes) else 0
        if len(self.sizes) and self.sizes[big] > self.units:
            raise TpError(f"example {big} has {self.sizes[big]:,} units (frames, tokens), more "
                          f"than a whole batch may hold (pretrain.batch_units={self.units:,})",
                          hint="raise pretrain.batch_units, or lower the processor's maximum "
                          "length so that such examples are refused at preprocessing")
        super().__init__(dataset, seed, pos, rank, world)

    def _begin(self, epoch: int) -> None:
        self._plan = self.plan(epoch)

    def plan(self, epoch: int) -> list[np.ndarray]:
        """Epoch `epoch`'s batches (arrays of example indices), in the order they are read."""
        g = epoch_generator(self.seed, epoch)
        rank = torch.randperm(self.n, generator=g).argsort().numpy()  # index -> place in perm
        order = np.lexsort((rank, self.sizes))  # by size, ties in the epoch's random order
        batches, start, longest = [], 0, 0
        for i, index in enumerate(order):
            longest = max(longest, int(self.sizes[index]))
            if i > start and (longest * (i - start + 1) > self.units or i - start >= self.cap):
                batches.append(order[start:i])
                start, longest = i, int(self.sizes[index])
        batches.append(order[start:])
        shuffle = torch.randperm(len(batches), generator=g).tolist()
        return [batches[j] for j in shuffle]

    def next_keys(self, size: int) -> list[Key]:
        """(epoch, index) of this rank's batch of the next `world` (`size` is not used: the
        batch is as large as `units` and `cap` allow)."""
        keys: list[Key] = []
        for j in range(self.world):
            if self.pos.offset >= len(self._plan):
                self.pos = DataPosition(self.pos.epoch + 1, 0)
                self._begin(self.pos.epoch)
            if j == self.rank:
                keys = [(self.pos.epoch, int(i)) for i in self._plan[self.pos.offset]]
            self.pos.offset += 1
        return keys


def padding_waste(sizes: np.ndarray, batches: list[np.ndarray]) -> float:
    """The share of the padded batches' units that are padding: 1 - real / (count x longest)."""
    real = sum(int(sizes[b].sum()) for b in batches)
    padded = sum(len(b) * int(sizes[b].max()) for b in batches)
    return 1.0 - real / padded if padded else 0.0


def load_batch(dataset: Any, keys: list[Key]) -> dict[str, torch.Tensor]:
    """The collated examples of `keys`: each read with the dataset set to its key's epoch."""
    examples = []
    for epoch, index in keys:
        if getattr(dataset, "epoch", epoch) != epoch:
            dataset.set_epoch(epoch)
        examples.append(dataset[index])
    return dataset.collate(examples)


@dataclass
class _Raised:
    """An exception a worker met, carried to the training process (which raises it there, with
    the worker's traceback as a note for --debug)."""

    error: BaseException
    trace: str


class _Loader(torch.utils.data.Dataset):
    """What a worker process runs: one item = one whole batch (its keys in, collated out)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getitem__(self, keys: list[Key]) -> Any:
        try:
            return load_batch(self.dataset, keys)
        except Exception as e:  # noqa: BLE001 - raised again, as itself, in the training process
            try:
                pickle.dumps(e)
            except Exception:  # noqa: BLE001 - an exception that cannot travel: its text does
                e = RuntimeError(f"{type(e).__name__}: {e}")
            return _Raised(e, traceback.format_exc())


class Batches:
    """The sampler's batches of `size` examples, loaded ahead of the step by `workers` processes
    (0: loaded in this process when asked for, as before prefetching).

    `pos` is where the sampler stood after the last batch returned by `next()`: what a checkpoint
    saves. Each worker loads whole batches, up to `depth` of them ahead, and a thread of this
    process receives them (unpickling costs the step nothing); the loop gets them in the
    sampler's order whatever the number of workers, so every number of workers trains the same
    model."""

    def __init__(self, sampler: Sampler, size: int, workers: int = 0, depth: int = 2,
                 pin_memory: bool = False) -> None:
        self.sampler, self.size, self.workers = sampler, size, workers
        self.pos = replace(sampler.pos)
        self._ends: deque[DataPosition] = deque()  # end position of each batch handed out
        self._it: Any = None
        self._ready: queue.Queue[tuple[Any, DataPosition]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        if workers > 0:
            loader = torch.utils.data.DataLoader(
                _Loader(sampler.dataset), batch_size=None, sampler=self._plan(),
                num_workers=workers, prefetch_factor=depth, pin_memory=pin_memory,
                collate_fn=_identity,
                generator=torch.Generator())  # its seed draw leaves the training RNG as it is
            self._it = iter(loader)
            self._thread = threading.Thread(target=self._receive, name="tp-batches", daemon=True)
            self._thread.start()

    def _plan(self) -> Iterator[list[Key]]:
        """The keys of batch after batch, drawn by the DataLoader in order."""
        while True:
            keys = self.sampler.next_keys(self.size)
            self._ends.append(replace(self.sampler.pos))
            yield keys

    def _receive(self) -> None:
        """The receiving thread: each batch from the workers, with the position after it, into
        the ready queue; a failure of the DataLoader itself (a worker killed) goes there too."""
        try:
            for batch in self._it:
                item = (batch, self._ends.popleft())
                while not self._stop.is_set():
                    try:
                        self._ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except Exception as e:  # noqa: BLE001 - handed to the training process's next()
            if not self._stop.is_set():
                self._ready.put((_Raised(e, traceback.format_exc()), self.pos))

    def next(self) -> dict[str, torch.Tensor]:
        """The next batch (this rank's slice)."""
        if self._it is None:
            batch = self.sampler.next_batch(self.size)
            self.pos = replace(self.sampler.pos)
            return batch
        while True:
            try:
                batch, self.pos = self._ready.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise TpError("the thread that receives batches from the data workers "
                                  "stopped", hint="run with --debug; set pretrain."
                                  "data_workers=0 to load batches in the training process")
        if isinstance(batch, _Raised):
            batch.error.add_note(f"raised in a data worker process:\n{batch.trace}")
            raise batch.error
        return batch

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the receiving thread and the workers (the loop calls this however training
        ends)."""
        it, self._it = self._it, None
        if it is None:
            return
        self._stop.set()
        it._shutdown_workers()  # the thread, if waiting on a worker, fails and sees the stop
        self._thread.join(timeout=5.0)


def _identity(batch: Any) -> Any:
    return batch
