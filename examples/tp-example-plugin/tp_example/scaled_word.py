"""`scaled_word`: a word embedding whose output is multiplied by sqrt(its width).

"Attention Is All You Need" (section 3.4) multiplies the embedding by sqrt(d_model) so the token
signal is not drowned by the positional one; fairseq and T2T do the same.

An embedding's width is `ctx.embed_dim`, not `ctx.hidden_size`: with `model.embedding_size` set
(ALBERT's factorized embedding) the embeddings are summed at that smaller width and projected to
hidden_size after, and an output layer tied to `word_weight` expects (V, embed_dim).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.model.module import BuildContext, ModuleConfig


class ScaledWordEmbedding(nn.Module):
    """Token embedding times a constant scale (default sqrt(width)), as in the Transformer."""

    class Config(ModuleConfig):
        scale: float | None = Field(
            None, gt=0.0, description="output multiplier; None: sqrt(embedding width)"
        )

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        # embed_dim: model.embedding_size when set (factorized), else hidden_size
        self.scale = config.scale if config.scale is not None else math.sqrt(ctx.embed_dim)
        self.embedding = nn.Embedding(ctx.vocab_size, ctx.embed_dim, padding_idx=ctx.pad_id)
        # what it reads from a batch: tp checks a recipe's data provides it, and the contract
        # test (tpcli.testing.contract) builds the module's test inputs from it
        self.inputs = (BatchKey("input_ids", "int64", ("T",), pad=ctx.pad_id or 0,
                                mask="attention_mask", unit="tokens", high=ctx.vocab_size),)

    @property
    def word_weight(self) -> torch.Tensor:
        """The (V, E) vocabulary matrix, unscaled: what an output layer ties to."""
        return self.embedding.weight

    def reset_parameters_tp(self) -> None:
        # std = 1/scale, so the scaled output starts with unit variance (fairseq's scheme); tp's
        # generic normal(0, init_std) times sqrt(H) would start it at ~0.55 for H = 768.
        nn.init.normal_(self.embedding.weight, 0.0, 1.0 / self.scale)
        if self.embedding.padding_idx is not None:
            with torch.no_grad():
                self.embedding.weight[self.embedding.padding_idx].zero_()

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding(inputs["input_ids"]) * self.scale  # (B, T, E)
