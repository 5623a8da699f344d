"""Word (token) embedding: the vocabulary matrix, shared with output layers when tied.

`scale` multiplies the looked-up vectors (not the table): fairseq-style models (S2T, mBART with
scale_embedding, the Transformer paper) feed sqrt(hidden) * table[id] to the stack while the
tied output layer reads the table as is. The default 1 leaves every other model as it was.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.model.module import BuildContext, ModuleConfig


class WordEmbedding(nn.Module):
    """Token embedding: input_ids (B, T) -> (B, T, E); exposes `word_weight` (V, E) for tying.

    A seq2seq model with `share_embeddings` makes its target-side word embedding read the source
    side's table (`share_from`): one parameter, one state-dict key."""

    class Config(ModuleConfig):
        scale: float = Field(
            1.0, gt=0.0, description="multiplier of the embedded vectors, e.g. sqrt(hidden_size) "
            "for S2T / fairseq models with scale_embedding (1: the table's rows as they are)")
        padding_row: bool = Field(
            True, description="the tokenizer's pad id is a padding row: zero at initialisation "
            "and never trained (BERT); false: an ordinary row (CLIP pads with its end-of-text "
            "token, whose vector the text pooling reads)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        pad = ctx.pad_id
        # the padding row gets no gradient (as in BERT), so it stays at its initial zeros
        padding_idx = pad if (config.padding_row and pad is not None
                              and 0 <= pad < ctx.vocab_size) else None
        self.embedding: nn.Embedding | None = nn.Embedding(
            ctx.vocab_size, ctx.embed_dim, padding_idx=padding_idx)
        self._shared: list[WordEmbedding] = []  # a plain list: the source is not a submodule
        self.inputs = (BatchKey("input_ids", "int64", ("T",), pad=pad if pad is not None else 0,
                                mask="attention_mask", unit="tokens", high=ctx.vocab_size),)

    def share_from(self, source: "WordEmbedding") -> None:
        """Use `source`'s table from now on and drop this module's own."""
        self.embedding = None
        self._shared = [source]

    def _table(self) -> nn.Embedding:
        if self._shared:
            return self._shared[0]._table()
        assert self.embedding is not None  # invariant: share_from sets _shared when it drops it
        return self.embedding

    @property
    def word_weight(self) -> torch.Tensor:
        return self._table().weight  # (V, E)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self._table()(inputs["input_ids"])  # (B, T, E)
        return x * self.config.scale if self.config.scale != 1.0 else x
