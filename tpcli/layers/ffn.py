"""Position-wise feed-forward block: Linear -> activation -> Linear."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "relu", "silu")


def make_activation(name: str) -> nn.Module:
    """`gelu` (exact, erf: BERT), `gelu_tanh` (tanh approximation: GPT-2), `relu`, `silu`."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


class FeedForward(nn.Module):
    """fc2(act(fc1(x))): (B, T, H) -> (B, T, F) -> (B, T, H). Residual dropout is the caller's."""

    def __init__(self, hidden_size: int, ffn_size: int, activation: str = "gelu",
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_size, bias=bias)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(ffn_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, H)
