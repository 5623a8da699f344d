"""Language model target (GPT-2): predict the next token at every position.

    hidden (B, T, H) -> output matrix (V, H) (tied to the word embedding) [+ bias (V)]
    -> cross-entropy against the next token (-100 = not predicted)

Labels are `lm_labels` (B, T) when the batch has them (a processor that packs documents and
knows where they end); otherwise the input shifted left by one, where the last position and any
position whose next token is padding are not predicted.

Prefix LM (`prefix_lm: true`): the batch carries `prefix_lengths` (B,), the number of leading
tokens of each row that are the condition, not the text to learn. Only the continuation is
predicted: position t predicts token t+1 for t >= prefix_length - 1 (the last prefix token
predicts the first continuation token); earlier positions are not predicted. The encoder must
then let the prefix see itself fully and the rest causally: query i may attend to key j iff
j <= i or j < prefix_length (and j is a real token).

`rescale_hidden` multiplies the hidden states by hidden_size ** -0.5 before the projection (T5
with an output tied to the word embedding: HF T5ForConditionalGeneration does the same).
"""

from __future__ import annotations


import torch
from pydantic import Field
from torch import nn

from tpcli.data.batch import IGNORE, next_token_labels
from tpcli.errors import DataError, TpError
from tpcli.layers.output import TiedOutput
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput



def drop_prefix(labels: torch.Tensor, prefix_lengths: torch.Tensor) -> torch.Tensor:
    """labels (B, T), prefix_lengths (B,) -> labels with positions t < prefix_length - 1 ignored."""
    t = torch.arange(labels.shape[1], device=labels.device)  # (T,)
    in_prefix = t[None, :] < (prefix_lengths.to(labels.device).long()[:, None] - 1)  # (B, T)
    return labels.masked_fill(in_prefix, IGNORE)


class LmTarget(TiedOutput, nn.Module):
    """Next-token prediction (GPT-2's LM head); metrics `acc` and `count` over predicted tokens."""

    class Config(TargetConfig):
        bias: bool = Field(False, description="a learned bias (V) on the output logits")
        label_smoothing: float = Field(
            0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy (0: none)"
        )
        prefix_lm: bool = Field(
            False, description="prefix LM: predict only after each row's prefix, read from the "
            "batch key `prefix_lengths` (B,); the encoder needs the matching prefix mask")
        rescale_hidden: bool = Field(
            False, description="multiply the hidden states by hidden_size ** -0.5 before the "
            "projection (T5 with a tied output)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        h, v = ctx.hidden_size, ctx.vocab_size
        self.init_output(h, v, bias=config.bias)  # own matrix until tie_weights()
        self.hidden_scale: float = h ** -0.5 if config.rescale_hidden else 1.0

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V)."""
        if self.config.rescale_hidden:
            hidden = hidden * self.hidden_scale
        return self.project(hidden)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        if features.hidden is None:
            raise TpError("target lm needs hidden states from the encoder",
                          hint="give the model an encoder (e.g. a causal transformer)")
        labels = batch.get("lm_labels")
        if labels is None:
            if "input_ids" not in batch:
                raise TpError("target lm needs `lm_labels` or `input_ids` in the batch")
            labels = next_token_labels(batch["input_ids"], batch.get("attention_mask"))
        if self.config.prefix_lm:
            prefix_lengths = batch.get("prefix_lengths")
            if prefix_lengths is None:
                raise DataError(
                    "target lm has prefix_lm on, but the batch has no `prefix_lengths`",
                    hint="use a data processor that marks each row's prefix, or set "
                    "model.target.lm.prefix_lm=false")
            labels = drop_prefix(labels, prefix_lengths.reshape(-1))
        hidden = features.hidden  # (B, T, H)
        flat_labels = labels.reshape(-1)  # (B*T,)
        rows = (flat_labels != IGNORE).nonzero().squeeze(1)  # (N,) predicted positions
        targets = flat_labels.index_select(0, rows)  # (N,)
        # project only the predicted rows: padding never reaches the (N, V) matmul
        x = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (N, H)
        if self.config.rescale_hidden:
            x = x * self.hidden_scale
        # the logits are never materialised whole: see tpcli.layers.output.linear_cross_entropy
        return self.prediction_output(x, targets, self.config.label_smoothing)

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if features.hidden is None:
            raise TpError("target lm needs hidden states from the encoder")
        return self.logits(features.hidden)  # (B, T, V)
