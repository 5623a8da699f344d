"""Learned absolute position embedding (BERT, GPT-2, RoBERTa).

Incremental decoding (`tpcli.downstream.generate`) feeds only the new tokens: it passes their positions as
`position_ids` (left-padded prompts), or `past_length`, the number of tokens before them, so
that the rows continue at offset + past_length."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.data.batch import BatchKey
from tpcli.model.module import BuildContext, ModuleConfig, sequence_length


class PosEmbedding(nn.Module):
    """Learned absolute positions: position_ids (or offset + 0..T-1 of the sequence) -> (B, T, H)."""

    class Config(ModuleConfig):
        max_length: int = Field(
            512, ge=1, description="rows of the position table (longest sequence + offset)")
        offset: int = Field(
            0, ge=0, description="row of the first position; rows below it are reserved "
            "(HF RoBERTa: 2, its padding index + 1)")
        padding_aware: bool = Field(
            False, description="number only real tokens (attention_mask) and give padding the "
            "row below `offset` (HF RoBERTa); false: every slot is numbered 0..T-1")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.max_length, ctx.embed_dim)
        self.inputs = (BatchKey("position_ids", "int64", ("T",), pad=0, high=config.max_length,
                                optional=True),)

    def forward(self, inputs: dict[str, torch.Tensor],
                sequence: torch.Tensor | None = None) -> torch.Tensor:
        position_ids = inputs.get("position_ids")
        if position_ids is not None:  # explicit rows of the table, used as given
            return self.embedding(position_ids)  # (B, T, H)
        b, t = sequence_length(inputs, sequence, "pos", fallback="input_ids")
        off = self.config.offset
        past = inputs.get("past_length")
        if past is not None:  # new tokens after `past` earlier ones (incremental decoding)
            off += int(past)
        if t + off > self.config.max_length:
            raise TpError(
                f"embedding pos: sequence length {t} (+ offset {off}) is longer than "
                f"max_length {self.config.max_length}",
                hint="shorten the sequences (the processor's seq_length) or raise "
                "model.embedding.pos.max_length (a new model then learns the extra positions)",
            )
        mask = inputs.get("attention_mask")
        if self.config.padding_aware and mask is not None:
            real = mask.long()  # (B, T)
            # real tokens: offset + their rank among real tokens; padding: offset - 1 (>= 0)
            rows = (torch.cumsum(real, dim=1) * real + (off - 1)).clamp(min=0)  # (B, T)
            return self.embedding(rows)  # (B, T, H)
        # a broadcast view of T consecutive rows: no (B, T) index tensor, no gather
        return self.embedding.weight[off:off + t].unsqueeze(0).expand(b, t, -1)  # (B, T, H)
