"""`scaled_word`: a word embedding whose output is multiplied by sqrt(hidden_size).

"Attention Is All You Need" (section 3.4) multiplies the embedding by sqrt(d_model) so the token
signal is not drowned by the positional one; fairseq and T2T do the same.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from tpcli.module import BuildContext, ModuleConfig


class ScaledWordEmbedding(nn.Module):
    """Token embedding times a constant scale (default sqrt(hidden_size)), as in the Transformer."""

    class Config(ModuleConfig):
        scale: float | None = Field(
            None, gt=0.0, description="output multiplier; None: sqrt(hidden_size)"
        )

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.scale = config.scale if config.scale is not None else math.sqrt(ctx.hidden_size)
        self.embedding = nn.Embedding(ctx.vocab_size, ctx.hidden_size, padding_idx=ctx.pad_id)

    @property
    def word_weight(self) -> torch.Tensor:
        """The (V, H) vocabulary matrix, unscaled: what an output layer ties to."""
        return self.embedding.weight

    def reset_parameters_tp(self) -> None:
        # std = 1/scale, so the scaled output starts with unit variance (fairseq's scheme); tp's
        # generic normal(0, init_std) times sqrt(H) would start it at ~0.55 for H = 768.
        nn.init.normal_(self.embedding.weight, 0.0, 1.0 / self.scale)
        if self.embedding.padding_idx is not None:
            with torch.no_grad():
                self.embedding.weight[self.embedding.padding_idx].zero_()

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding(inputs["input_ids"]) * self.scale  # (B, T, H)
