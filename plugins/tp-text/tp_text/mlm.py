"""Masked language model target (BERT): predict the original token at each masked position.

    hidden -> dense (H, E) -> activation -> LayerNorm -> decoder (V, E) (tied to the word
    embedding) + bias (V) -> cross-entropy against `mlm_labels` (-100 = not masked)

A joined sequence longer than the text (ViLT's `word_patch`: the text, then the image's patches)
is read over its first T positions, T the width of `mlm_labels` (of `input_ids` in `predict`):
the text comes first, and only text is predicted.

Only ~15% of the positions are masked, and the vocabulary projection is the largest matmul of
the model, so training gathers the masked rows first and projects only those.
"""

from __future__ import annotations


import torch
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.layers.ffn import Activation, make_activation
from tpcli.layers.output import TiedOutput
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput

IGNORE = -100  # label of a position that is not predicted


class MlmTarget(TiedOutput, nn.Module):
    """Masked language modelling (BERT's MLM head); metrics `acc` and `count` over masked tokens."""

    class Config(TargetConfig):
        activation: Activation = Field("gelu", description="activation of the transform layer")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        # e = the embedding width: hidden_size, or ALBERT's smaller factorized width, so the
        # output matrix (V, e) can be the word embedding itself
        h, e, v = ctx.hidden_size, ctx.embed_dim, ctx.vocab_size
        self.dense = nn.Linear(h, e)
        self.act = make_activation(config.activation)
        self.norm = nn.LayerNorm(e, eps=ctx.norm_eps)
        self.init_output(e, v, bias=True)  # own matrix until tie_weights()

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., E): the head's dense + activation + LayerNorm."""
        return self.norm(self.act(self.dense(hidden)))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V)."""
        return self.project(self.transform(hidden))

    def read_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T) True at the masked positions, the only hidden states the loss reads (the
        model's last layer then computes no others); None without labels."""
        labels = batch.get("mlm_labels")
        return None if labels is None else labels != IGNORE

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("mlm_labels")
        if labels is None or features.hidden is None:
            raise TpError(
                "target mlm needs `mlm_labels` in the batch and hidden states from the encoder",
                hint="use a data processor that masks tokens (e.g. `bert` or `mlm`)",
            )
        hidden = text_part(features.hidden, labels.shape[1])  # (B, T, H)
        flat_labels = labels.reshape(-1)  # (B*T,)
        rows = (flat_labels != IGNORE).nonzero().squeeze(1)  # (N,) masked positions
        targets = flat_labels.index_select(0, rows)  # (N,)
        rows_h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (N, H)
        x = self.transform(rows_h)  # (N, E)
        # the logits are never materialised whole: see tpcli.layers.output.linear_cross_entropy
        return self.prediction_output(x, targets)

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if features.hidden is None:
            raise TpError("target mlm needs hidden states from the encoder")
        ids = batch.get("input_ids")  # the text of this stack (a decoder's hidden is not)
        hidden = features.hidden if ids is None or features.memory is not None \
            else text_part(features.hidden, ids.shape[1])
        return self.logits(hidden)  # (B, T, V)


def text_part(hidden: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T', H) -> (B, T, H): the first `length` positions of a sequence longer than the
    text (text first, then e.g. image patches); the sequence itself otherwise."""
    return hidden[:, :length] if hidden.shape[1] > length else hidden
