"""The distribution strategies behind `tpcli.train.strategy.Strategy` (single, ddp, fsdp,
deepspeed) and the factory that picks one. Each is imported only when chosen: DeepSpeed is heavy
and optional."""

from __future__ import annotations

from tpcli.errors import TpError
from tpcli.recipes.options import PretrainOptions
from tpcli.train.strategy import STRATEGIES, Dist, Strategy


def make_strategy(opts: PretrainOptions, dist: Dist) -> Strategy:
    """The strategy named by `pretrain.strategy` ("auto": ddp under torchrun with WORLD_SIZE > 1,
    else single)."""
    name = opts.strategy
    if name == "auto":
        name = "ddp" if dist.world_size > 1 else "single"
    if name == "single" and dist.world_size > 1:
        raise TpError(f"pretrain.strategy=single runs one process, but torchrun started "
                      f"{dist.world_size}",
                      hint="use pretrain.strategy=ddp (or fsdp, deepspeed), or run one process")
    if name == "single":
        from tpcli.train.strategies.single import SingleStrategy

        return SingleStrategy(opts, dist)
    if name == "ddp":
        from tpcli.train.strategies.ddp import DdpStrategy

        return DdpStrategy(opts, dist)
    if name == "fsdp":
        from tpcli.train.strategies.fsdp import FsdpStrategy

        return FsdpStrategy(opts, dist)
    if name == "deepspeed":
        # imports DeepSpeed itself (after choosing its accelerator); a missing DeepSpeed is a
        # TpError with the install command
        from tpcli.train.strategies.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy(opts, dist)
    raise TpError(f"unknown pretrain.strategy {name!r}",
                  hint=f"choose one of: auto, {', '.join(STRATEGIES)}")


def resolved_name(opts: PretrainOptions, world_size: int) -> str:
    """`pretrain.strategy` with "auto" resolved, as make_strategy resolves it."""
    if opts.strategy == "auto":
        return "ddp" if world_size > 1 else "single"
    return opts.strategy
