"""Registers the loggers. Lazy strings: neither tensorboard nor wandb (nor torch) is imported
when tp starts, only when a run chooses the logger."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_loggers(register: Callable[[str, Any], None]) -> None:
    register("tensorboard", "tp_loggers.tensorboard:TensorBoardLogger")
    register("wandb", "tp_loggers.wandb:WandbLogger")
