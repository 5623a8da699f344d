"""Poolings: (B, T, H) hidden states and a (B, T) mask (True = real token) -> (B, H).

Each registered pooling is a thin module over the pure functions of `tpcli.layers.pooling`,
which the `cls` target uses too: padding on either side never contributes, `first`/`last` are
the first/last REAL tokens, and a row that is all padding pools to zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from tpcli.layers.pooling import first_pool, last_pool, max_pool, mean_pool
from tpcli.model.module import BuildContext, ModuleConfig


class _Pooling(nn.Module):
    """Shared constructor; each pooling declares its own (empty) Config."""

    def __init__(self, config: ModuleConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config


class FirstPooling(_Pooling):
    """The first real token's hidden state ([CLS] in BERT)."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return first_pool(hidden, mask)  # (B, H)


class LastPooling(_Pooling):
    """The last real token's hidden state (GPT-style), wherever the padding is."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return last_pool(hidden, mask)  # (B, H)


class MeanPooling(_Pooling):
    """The mean of the real tokens' hidden states (Sentence-BERT)."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return mean_pool(hidden, mask)  # (B, H)


class MaxPooling(_Pooling):
    """The element-wise maximum over the real tokens' hidden states (InferSent)."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return max_pool(hidden, mask)  # (B, H)
