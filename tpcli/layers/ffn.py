"""Position-wise feed-forward block: Linear -> activation -> Linear."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's cheaper approximation of GELU (its weights were
    trained with it, so a converted CLIP needs exactly this one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """`gelu` (exact, erf: BERT), `gelu_tanh` (tanh approximation: GPT-2), `quick_gelu`
    (sigmoid approximation: CLIP), `relu`, `silu`."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


class FeedForward(nn.Module):
    """fc2(act(fc1(x))): (B, T, H) -> (B, T, F) -> (B, T, H). Residual dropout is the caller's.

    Gated (`gate=True`, GLU family: LLaMA SwiGLU with silu, T5 v1.1 with gelu_tanh): fc1 is ONE
    fused Linear (2F, H) whose rows are [W_gate; W_up], and out = fc2(act(gate x) * (up x)).
    """

    def __init__(self, hidden_size: int, ffn_size: int, activation: str = "gelu",
                 bias: bool = True, gate: bool = False) -> None:
        super().__init__()
        self.gate = gate
        self.fc1 = nn.Linear(hidden_size, (2 if gate else 1) * ffn_size, bias=bias)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(ffn_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate:
            gate, up = self.fc1(x).chunk(2, dim=-1)  # each (B, T, F)
            return self.fc2(self.act(gate) * up)  # (B, T, H)
        return self.fc2(self.act(self.fc1(x)))  # (B, T, H)
