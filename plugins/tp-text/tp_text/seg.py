"""Segment (token type) embedding: which sentence of a pair a token belongs to (BERT)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.model.module import BuildContext, ModuleConfig, sequence_length


class SegEmbedding(nn.Module):
    """Segment embedding: segment_ids (B, T) (default: all 0) -> (B, T, H)."""

    class Config(ModuleConfig):
        types: int = Field(2, ge=1, description="number of segment types (2: sentence A / B)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.types, ctx.embed_dim)
        self.inputs = (BatchKey("segment_ids", "int64", ("T",), pad=0, high=config.types,
                                optional=True),)

    def forward(self, inputs: dict[str, torch.Tensor],
                sequence: torch.Tensor | None = None) -> torch.Tensor:
        segment_ids = inputs.get("segment_ids")
        if segment_ids is None:
            b, t = sequence_length(inputs, sequence, "seg", fallback="input_ids")
            return self.embedding.weight[0].expand(b, t, -1)  # (B, T, H): all in segment 0
        return self.embedding(segment_ids)  # (B, T, H)
