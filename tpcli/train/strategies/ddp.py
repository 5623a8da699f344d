"""DistributedDataParallel: every rank holds the whole model; gradients are averaged across ranks
once per optimizer step (not on the other micro-batches of gradient accumulation).

DDP must be told whether some parameters take no part in the loss (`find_unused_parameters`, an
extra walk of the autograd graph on every step): tp decides it at the first micro-batch, from that
batch's autograd graph on every rank, and builds the DDP wrapper then. (`static_graph=True` would
decide it too, but it mis-averages a weight used twice, as a tied embedding is.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tpcli.train.strategies.single import SingleStrategy


class DdpStrategy(SingleStrategy):
    """Replicated weights and optimizer state: checkpoints are the single strategy's (trainer.pt by
    rank 0), so a ddp run resumes with any number of processes, or with one."""

    name = "ddp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ddp: DistributedDataParallel | None = None
        self._sync = True  # all-reduce gradients in this micro-batch's backward

    def setup(self, model: nn.Module) -> nn.Module:
        self.dist.ensure_group()
        model = self._prepare(model)
        self._build_optimizer(model)
        return _WrapOnFirstBatch(model, self)

    @contextmanager
    def accumulate(self, is_last_micro: bool) -> Iterator[None]:
        # what DDP's no_sync does, also for the first micro-batch, before the wrapper exists
        self._sync = is_last_micro
        try:
            yield
        finally:
            self._sync = True
            if self.ddp is not None:
                self.ddp.require_backward_grad_sync = True

    def wrap(self, batch: dict[str, torch.Tensor]) -> DistributedDataParallel:
        assert self.model is not None
        unused = torch.tensor([float(_has_unused_parameters(self.model, batch))],
                              device=self.dist.device)
        any_unused = bool(self.dist.all_reduce_sum(unused).item())
        cuda = self.dist.device.type == "cuda"
        # broadcasts rank 0's weights: every rank starts from the same model
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[self.dist.local_rank] if cuda else None,
            find_unused_parameters=any_unused)
        return self.ddp


class _WrapOnFirstBatch(nn.Module):
    """The loop's module: the model, run through DDP; DDP is built at the first forward."""

    def __init__(self, model: nn.Module, strategy: DdpStrategy) -> None:
        super().__init__()
        self.module = model
        object.__setattr__(self, "_strategy", strategy)  # not a submodule

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        s: DdpStrategy = self._strategy
        ddp = s.ddp if s.ddp is not None else s.wrap(batch)
        ddp.require_backward_grad_sync = s._sync
        return ddp(batch)


def _has_unused_parameters(model: nn.Module, batch: dict[str, torch.Tensor]) -> bool:
    """Whether the loss of `batch` leaves a trainable parameter out: one forward, whose autograd
    graph is walked (no backward). FLOP counting and the RNG streams do not see it."""
    from torch.utils._python_dispatch import _disable_current_modes

    devices = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else []
    with _disable_current_modes(), torch.random.fork_rng(devices=devices):
        loss = model(batch).loss
        used: set[int] = set()
        seen: set[Any] = set()
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
            if variable is not None:
                used.add(id(variable))
            stack.extend(n for n, _ in node.next_functions)
    return any(p.requires_grad and id(p) not in used for p in model.parameters())
