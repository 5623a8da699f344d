"""How the loop's model is distributed: the process group (`Dist`) and the `Strategy` interface.

The loop is written once against `Strategy`; a strategy decides where the weights live (one
process, replicated with DDP, sharded with FSDP2 or DeepSpeed ZeRO), how gradients are reduced and
how optimizer state is saved. `tpcli.train.strategies.make_strategy` picks one by
`pretrain.strategy`; this module imports none of them.

Data parallelism in tp (see `tpcli.train.loop.Sampler`): every optimizer step consumes
`batch_size` examples of ONE global permutation; rank r of W reads the r-th contiguous slice of
each micro-batch. The data order therefore does not depend on W, and DDP with W ranks sees the
same global batch as one process.
"""

from __future__ import annotations

import os
import socket
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as tdist
from torch import nn

from tpcli.errors import TpError
from tpcli.recipes.options import PretrainOptions

STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")
SHARDED = ("fsdp", "deepspeed")  # optimizer state split across ranks: resume needs the same W


class Dist:
    """The process group as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    `Dist()` reads torchrun's environment and joins its process group when WORLD_SIZE > 1 (nccl
    on CUDA, gloo on CPU). A plain `python` process is rank 0 of 1 and starts no process group
    until a strategy needs one (`ensure_group`). `device` is cuda:LOCAL_RANK when CUDA is used."""

    def __init__(self, device: str = "auto") -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise TpError("pretrain.device=cuda but no CUDA device is available",
                          hint="use pretrain.device=cpu or auto")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        if self.world_size > 1:
            self.ensure_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group exists: collectives do something."""
        return tdist.is_available() and tdist.is_initialized()

    def ensure_group(self) -> None:
        """Join (or, for one process, create) the default process group."""
        if self.active:
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:
            tdist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                     device_id=self.device if self.device.type == "cuda" else None)
        else:  # one process without torchrun (FSDP or DeepSpeed on a single device)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                     world_size=1)

    def close(self) -> None:
        if self.active:
            tdist.destroy_process_group()

    # -- collectives (no-ops without a process group)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.active and self.world_size > 1:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
            t /= self.world_size
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active and self.world_size > 1:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.active and self.world_size > 1:
            tdist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not (self.active and self.world_size > 1):
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0; None elsewhere."""
        if not (self.active and self.world_size > 1):
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        tdist.gather_object(obj, out, dst=0)
        return out


class Strategy(Protocol):
    """What the loop asks of a distribution strategy (single, ddp, fsdp, deepspeed)."""

    name: str

    def __init__(self, opts: PretrainOptions, dist: Dist) -> None: ...

    def setup(self, model: nn.Module) -> nn.Module:
        """Move/wrap the model and build optimizer + scheduler; return the module whose
        `forward(batch) -> ModelOutput` the loop calls."""
        ...

    def accumulate(self, is_last_micro: bool) -> AbstractContextManager[Any]:
        """Around forward + backward of one micro-batch: DDP skips the gradient all-reduce
        (no_sync) until the last micro-batch of the step."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """`loss` is already divided by grad_accum."""
        ...

    def step(self) -> torch.Tensor:
        """Clip (opts.grad_clip), optimizer.step, scheduler.step, zero_grad; the grad norm
        before clipping, as a tensor on the device (the loop syncs it once per log window)."""
        ...

    def lr(self) -> float: ...

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights with tp's keys, on CPU, on rank 0; None on other ranks.
        Every rank must call it (collective)."""
        ...

    def save_trainer_state(self, folder: Path, extra: dict[str, Any]) -> None:
        """Optimizer/scheduler state (sharded strategies: one file or folder per rank) and
        `extra` (data position, rng, step) by rank 0 into trainer.pt. All ranks call it with the
        same folder."""
        ...

    def load_trainer_state(self, folder: Path) -> dict[str, Any]:
        """Restore what save_trainer_state wrote (after setup); return `extra`."""
        ...

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Full weights (tp keys) into the model; single/ddp/fsdp: call BEFORE setup."""
        ...


def layer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model, outside its targets: every layer of a ModuleList holding
    two or more (transformer layers of encoders and decoders), and every recurrent module (LSTM,
    GRU, RNN). FSDP shards each separately and activation checkpointing recomputes each.

    A list of one is left out: ALBERT's shared layer runs once per depth, which FSDP would
    gather and free again at every call."""
    blocks: list[nn.Module] = []
    targets = getattr(model, "targets", None)
    skip = set(map(id, targets.modules())) if isinstance(targets, nn.Module) else set()
    for m in model.modules():  # pre-order: a list is met before its layers
        if id(m) in skip:
            continue
        if isinstance(m, nn.ModuleList) and len(m) >= 2:
            chosen = [c for c in m if any(True for _ in c.parameters())]
        elif isinstance(m, nn.RNNBase):
            chosen = [m]
        else:
            continue
        blocks.extend(chosen)
        skip.update(id(d) for c in chosen for d in c.modules())  # no block inside a block
    return blocks


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each layer block's activations in backward instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for block in layer_blocks(model):
        inner = block.forward

        def forward(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward  # type: ignore[method-assign]
