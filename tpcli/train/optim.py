"""AdamW with the usual no-decay groups, and the warm-up + decay schedules."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from tpcli.recipes.config import PretrainOptions


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Biases and norm weights (1-D tensors) get no weight decay, as in BERT and GPT-2."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_depth(name: str, layers: int) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for embeddings, l + 1 for layer l of a
    stack's `layers`, layers + 1 for everything above (final norm, decoder, targets)."""
    if "embedding" in name.split(".")[0:2] or name.startswith(("stack.embedding.",
                                                               "stream_0.embedding.",
                                                               "stream_1.embedding.")):
        return 0
    m = _LAYER.search(name)
    return int(m.group(1)) + 1 if m and not name.startswith(("decoder.", "targets.")) else \
        layers + 1


def decayed_groups(model: nn.Module, weight_decay: float, lr: float, decay: float
                   ) -> list[dict]:
    """`param_groups` split by depth, each at lr * decay^(layers + 1 - depth) (ELECTRA /
    BEiT's layer-wise decay: the head trains at lr, the embeddings slowest)."""
    names = {id(p): n for n, p in model.named_parameters()}
    depths = [int(m.group(1)) + 1 for n in names.values() if (m := _LAYER.search(n))]
    layers = max(depths, default=0)
    groups: dict[tuple[int, float], dict] = {}
    for base in param_groups(model, weight_decay):
        for p in base["params"]:
            d = layer_depth(names[id(p)], layers)
            g = groups.setdefault((d, base["weight_decay"]), {
                "params": [], "weight_decay": base["weight_decay"],
                "lr": lr * decay ** (layers + 1 - d), "depth": d})
            g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def _fusable(groups: list[dict]) -> bool:
    """torch's fused AdamW (one kernel for every tensor: ~3.5x the foreach step on CPU) takes
    plain floating-point tensors on CPU or CUDA; sharded DTensors (FSDP2) keep foreach."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(
        type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        for p in params)


def make_optimizer(model: nn.Module, opts: PretrainOptions, fused: bool | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; `fused` None picks the fused kernel where it applies."""
    decay = getattr(opts, "layer_decay", None)
    groups = (decayed_groups(model, opts.weight_decay, opts.lr, decay) if decay else
              param_groups(model, opts.weight_decay))
    fused = _fusable(groups) if fused is None else fused
    return torch.optim.AdamW(
        groups,
        lr=opts.lr,
        betas=opts.betas,
        eps=opts.adam_eps,
        **({"fused": True} if fused else {"foreach": True}),
    )


def warmup_steps(opts: PretrainOptions) -> int:
    if opts.warmup_steps is not None:
        return min(opts.warmup_steps, opts.steps)
    return int(round(opts.warmup_ratio * opts.steps))


def lr_factor(step: int, opts: PretrainOptions) -> float:
    """Multiplier of the peak lr after `step` optimizer steps (LambdaLR convention)."""
    warm = warmup_steps(opts)
    if step < warm:
        return (step + 1) / (warm + 1)
    if opts.schedule == "constant":
        return 1.0
    if opts.schedule == "inverse_sqrt":  # fairseq's: lr * sqrt(warmup / step) after warm-up
        return max(opts.min_lr_ratio, math.sqrt(max(warm, 1) / max(step, 1)))
    span = max(1, opts.steps - warm)
    progress = min(1.0, (step - warm) / span)
    floor = opts.min_lr_ratio
    if opts.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, opts: PretrainOptions):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opts))
