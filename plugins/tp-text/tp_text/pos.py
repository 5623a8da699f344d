"""Learned absolute position embedding (BERT, GPT-2)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.module import BuildContext, ModuleConfig


class PosEmbedding(nn.Module):
    """Learned absolute positions: position_ids (or 0..T-1) -> (B, T, H)."""

    class Config(ModuleConfig):
        max_length: int = Field(512, ge=1, description="longest sequence the model can read")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.max_length, ctx.hidden_size)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        position_ids = inputs.get("position_ids")
        if position_ids is not None:
            return self.embedding(position_ids)  # (B, T, H)
        b, t = inputs["input_ids"].shape
        if t > self.config.max_length:
            raise TpError(
                f"embedding pos: sequence length {t} is longer than max_length "
                f"{self.config.max_length}",
                hint="shorten the sequences (the processor's seq_length) or raise "
                "model.embedding.pos.max_length (a new model then learns the extra positions)",
            )
        # a broadcast view of the first T rows: no (B, T) index tensor, no gather
        return self.embedding.weight[:t].unsqueeze(0).expand(b, t, -1)  # (B, T, H)
