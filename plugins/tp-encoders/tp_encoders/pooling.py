"""Poolings: (B, T, H) hidden states and a (B, T) mask (True = real token) -> (B, H).

Every pooling is padding-aware: padded positions never contribute. A row that is all padding
pools to zeros (mean) or to the dtype's minimum (max) rather than NaN or -inf.
"""

from __future__ import annotations

import torch
from torch import nn

from tpcli.module import BuildContext, ModuleConfig


class _Pooling(nn.Module):
    """Shared constructor; each pooling declares its own (empty) Config."""

    def __init__(self, config: ModuleConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config


class FirstPooling(_Pooling):
    """The first token's hidden state ([CLS] in BERT)."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return hidden[:, 0]  # (B, H)


class LastPooling(_Pooling):
    """The last real token's hidden state (GPT-style), wherever the padding is."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return hidden[:, -1]
        t = hidden.shape[1]
        positions = torch.arange(1, t + 1, device=hidden.device)  # 1-based: 0 marks padding
        last = (mask.long() * positions).argmax(dim=1)  # (B,) index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)


class MeanPooling(_Pooling):
    """The mean of the real tokens' hidden states (Sentence-BERT)."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return hidden.mean(dim=1)
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, H)


class MaxPooling(_Pooling):
    """The element-wise maximum over the real tokens' hidden states."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return hidden.amax(dim=1)
        floor = torch.finfo(hidden.dtype).min
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), floor).amax(dim=1)  # (B, H)
