"""One process, one device: the model as built, AdamW and the schedule around it.

DDP and FSDP reuse its optimizer, schedule and step; they differ in how the model is wrapped and
how state is gathered and saved."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tpcli.recipes.options import PretrainOptions
from tpcli.train import checkpoint as ckpt_io
from tpcli.train.optim import make_optimizer, make_scheduler
from tpcli.train.strategy import Dist, checkpoint_activations


class SingleStrategy:
    """The model on `dist.device`; trainer.pt holds optimizer + scheduler + the loop's extra."""

    name = "single"

    def __init__(self, opts: PretrainOptions, dist: Dist) -> None:
        self.opts, self.dist = opts, dist
        self.model: nn.Module | None = None  # the unwrapped model, once set up
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    def _prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.dist.device)
        if self.opts.activation_checkpointing:
            checkpoint_activations(model)
        self.model = model
        return model

    def _build_optimizer(self, model: nn.Module) -> None:
        self.optimizer = make_optimizer(model, self.opts)
        self.scheduler = make_scheduler(self.optimizer, self.opts)

    def setup(self, model: nn.Module) -> nn.Module:
        model = self._prepare(model)
        self._build_optimizer(model)
        return model

    def accumulate(self, is_last_micro: bool) -> AbstractContextManager[Any]:
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _clip(self) -> torch.Tensor:
        assert self.model is not None
        clip = self.opts.grad_clip if self.opts.grad_clip > 0 else math.inf
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)

    def step(self) -> torch.Tensor:
        assert self.optimizer is not None
        norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        assert self.model is not None
        if not self.dist.is_main:
            return None
        return {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}

    def save_trainer_state(self, folder: Path, extra: dict[str, Any]) -> None:
        """Replicated state: rank 0 writes it all into trainer.pt."""
        assert self.optimizer is not None
        if self.dist.is_main:
            torch.save({**extra, "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, folder / ckpt_io.TRAINER)

    def load_trainer_state(self, folder: Path) -> dict[str, Any]:
        assert self.optimizer is not None
        state = ckpt_io.read_trainer_state(folder)
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        return state

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load into the (set up or not yet set up) model; names any missing key."""
        assert self.model is not None, "load_weights needs setup() first"
        ckpt_io.load_weights(self.model, state, "weights")
