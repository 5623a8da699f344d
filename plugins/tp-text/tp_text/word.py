"""Word (token) embedding: the vocabulary matrix, shared with output layers when tied."""

from __future__ import annotations

import torch
from torch import nn

from tpcli.module import BuildContext, ModuleConfig


class WordEmbedding(nn.Module):
    """Token embedding: input_ids (B, T) -> (B, T, H); exposes `word_weight` (V, H) for tying."""

    class Config(ModuleConfig):
        pass

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        pad = ctx.pad_id
        # the padding row gets no gradient (as in BERT), so it stays at its initial zeros
        padding_idx = pad if pad is not None and 0 <= pad < ctx.vocab_size else None
        self.embedding = nn.Embedding(ctx.vocab_size, ctx.hidden_size, padding_idx=padding_idx)

    @property
    def word_weight(self) -> torch.Tensor:
        return self.embedding.weight  # (V, H)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding(inputs["input_ids"])  # (B, T, H)
