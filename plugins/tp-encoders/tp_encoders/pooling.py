"""Poolings: (B, T, H) hidden states and a (B, T) mask (True = real token) -> (B, H).

Each registered pooling is a thin module over the pure functions of `tpcli.layers.pooling`,
which the `cls` target uses too: padding on either side never contributes, `first`/`last` are
the first/last REAL tokens, and a row that is all padding pools to zeros.

`mean` also pools as BEiT does: over the patches only (`skip_first`, leaving out the class token
in position 0), then a LayerNorm (`norm`, HF's `pooler.layernorm`).
"""

from __future__ import annotations

import torch
from pydantic import Field
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

    def read_position(self, mask: torch.Tensor | None, b: int, t: int) -> torch.Tensor:
        """(B,) the position `forward` reads: the model may compute the last layer there only."""
        if mask is None:
            return torch.zeros(b, dtype=torch.long)
        return mask.int().argmax(dim=1)


class LastPooling(_Pooling):
    """The last real token's hidden state (GPT-style), wherever the padding is."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return last_pool(hidden, mask)  # (B, H)

    def read_position(self, mask: torch.Tensor | None, b: int, t: int) -> torch.Tensor:
        """(B,) the position `forward` reads: the model may compute the last layer there only."""
        if mask is None:
            return torch.full((b,), t - 1, dtype=torch.long)
        positions = torch.arange(1, t + 1, device=mask.device)  # 1-based: 0 = padding
        return (mask.long() * positions).argmax(dim=1)


class MeanPooling(_Pooling):
    """The mean of the real tokens' hidden states (Sentence-BERT); BEiT: of the patches, then
    normalised."""

    class Config(ModuleConfig):
        skip_first: bool = Field(
            False, description="leave out position 0 (the class token of a ViT/BEiT sequence)")
        norm: bool = Field(False, description="a LayerNorm after pooling (BEiT's pooler)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.skip_first = config.skip_first
        self.norm = nn.LayerNorm(ctx.hidden_size, eps=ctx.norm_eps) if config.norm else None

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_first:
            hidden = hidden[:, 1:]  # (B, T - 1, H)
            mask = mask[:, 1:] if mask is not None else None
        pooled = mean_pool(hidden, mask)  # (B, H)
        return self.norm(pooled) if self.norm is not None else pooled


class MaxPooling(_Pooling):
    """The element-wise maximum over the real tokens' hidden states (InferSent)."""

    class Config(ModuleConfig):
        pass

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return max_pool(hidden, mask)  # (B, H)
