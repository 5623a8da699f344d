"""FSDP2: `torch.distributed.fsdp.fully_shard` on every layer block and on the root.

Each rank holds 1/W of every parameter, gradient and optimizer state (DTensors sharded on dim 0);
a layer's full weights exist only while it runs. The root unit holds the embeddings and targets,
so a target tied to the word embedding reads the gathered weight.

Checkpoints: model.safetensors holds the gathered full weights (rank 0); the optimizer state
stays sharded, written by every rank through torch.distributed.checkpoint into `fsdp/`
(one file per rank + metadata). Resuming needs the same number of processes."""

from __future__ import annotations

import errno
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from tpcli.errors import CheckpointError
from tpcli.train import checkpoint as ckpt_io
from tpcli.train.strategies.single import SingleStrategy
from tpcli.train.strategy import layer_blocks

SHARDS = "fsdp"  # the folder of the sharded optimizer state inside a checkpoint


class FsdpStrategy(SingleStrategy):
    name = "fsdp"

    def setup(self, model: nn.Module) -> nn.Module:
        self.dist.ensure_group()
        model = self._prepare(model)
        mesh = init_device_mesh(self.dist.device.type, (self.dist.world_size,))
        # an LSTM/GRU unit returns views of its packed output; tp never modifies them in place
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP(LSTM|GRU|RNN)\)")
        for block in layer_blocks(model):  # innermost units first, the root last
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        self._build_optimizer(model)  # over the sharded (DTensor) parameters
        return model

    def accumulate(self, is_last_micro: bool) -> AbstractContextManager[Any]:
        # FSDP's no_sync: keep unsharded gradients until the last micro-batch, reduce-scatter once
        assert isinstance(self.model, FSDPModule)
        self.model.set_requires_gradient_sync(is_last_micro)
        return nullcontext()

    def step(self) -> torch.Tensor:
        norm = super().step()
        # the norm of sharded gradients is a replicated DTensor: the same number on every rank
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        assert self.model is not None
        full = get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))  # gathered on rank 0 only
        if not self.dist.is_main:
            return None
        return {k: v.contiguous() for k, v in full.items()}

    def save_trainer_state(self, folder: Path, extra: dict[str, Any]) -> None:
        assert self.optimizer is not None and self.model is not None
        optim = get_optimizer_state_dict(self.model, self.optimizer)
        try:
            dcp.save({"optimizer": optim}, checkpoint_id=str(folder / SHARDS))
        except CheckpointException as e:  # every rank raises it: say why, as a write error
            reason = next((str(getattr(f, "exc", f)) for f in e.failures.values()), str(e))
            raise OSError(errno.EIO, f"a rank could not write its optimizer shard: {reason}") from e
        if self.dist.is_main:
            torch.save({**extra, "scheduler": self.scheduler.state_dict()},
                       folder / ckpt_io.TRAINER)

    def load_trainer_state(self, folder: Path) -> dict[str, Any]:
        assert self.optimizer is not None and self.model is not None
        if not (folder / SHARDS).is_dir():
            raise CheckpointError(f"{folder} has no {SHARDS}/ optimizer shards: it was not "
                                  "written by the fsdp strategy",
                                  hint="resume with the strategy that wrote it")
        state = ckpt_io.read_trainer_state(folder)
        # a template with the optimizer state allocated (torch steps once at lr 0 for it)
        optim = get_optimizer_state_dict(self.model, self.optimizer)
        dcp.load({"optimizer": optim}, checkpoint_id=str(folder / SHARDS))
        set_optimizer_state_dict(self.model, self.optimizer, optim)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.load_state_dict(state.pop("scheduler"))
        return state

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Full weights (tp keys, every rank passes them) into the sharded model, after setup."""
        assert self.model is not None, "load_weights needs setup() first"
        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
