"""Normalisation layers."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight (T5, LLaMA): no mean subtraction, no bias. Computed in fp32."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * y).to(x.dtype)


def make_norm(kind: str, size: int, eps: float) -> nn.Module:
    """`layernorm` | `rmsnorm` | `none` (identity)."""
    if kind == "layernorm":
        return nn.LayerNorm(size, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(size, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")
