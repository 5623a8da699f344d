"""Multiple-choice target (SWAG, RACE, ARC): one score per choice, a softmax over the K choices.

A row holds the K (question, choice) segments of one example laid end to end, each
`[CLS] a [SEP] b [SEP]`; `choice_starts` (B, K) gives the row position of each segment's first
token. Keeping an example's choices in one row is what lets the generic fine-tuning loop shuffle
rows freely and the standard collate pad them (a (T,) field, a (K,) field and a scalar label).

    hidden (B, T, H) -> the hidden state at each choice start (B, K, H)
    -> [pooler: dense (H, H) -> tanh]  (BERT's pooler, optional)
    -> dropout -> scorer (1, H) -> scores (B, K) -> cross-entropy against `labels` (B,)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import DataError, TpError
from tpcli.layers.dropout import Dropout
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput


class ChoiceTarget(nn.Module):
    """Pick one of K choices per example; metrics `acc` and `count`."""

    class Config(TargetConfig):
        pooler: bool = Field(
            True, description="BERT's pooler (dense H->H + tanh) on each choice's first token")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        h = ctx.hidden_size
        self.pooler = nn.Linear(h, h) if config.pooler else None
        self.dropout = Dropout(ctx.dropout)
        self.scorer = nn.Linear(h, 1)

    def scores(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features -> (B, K) choice scores."""
        starts = batch.get("choice_starts")
        if starts is None:
            raise TpError("target choice needs `choice_starts` (B, K) in the batch: where each "
                          "choice's segment starts in its row",
                          hint="fine-tune it with the `choice` task, which encodes them")
        if features.hidden is None:
            raise TpError("target choice needs per-token hidden states from the encoder",
                          hint="use a single-stream model with an encoder")
        h = features.hidden  # (B, T, H)
        index = starts.long().unsqueeze(-1).expand(-1, -1, h.shape[-1])  # (B, K, H)
        x = torch.gather(h, 1, index)  # (B, K, H)
        if self.pooler is not None:
            x = torch.tanh(self.pooler(x))
        return self.scorer(self.dropout(x)).squeeze(-1).float()  # (B, K)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("labels")
        if labels is None:
            raise TpError("target choice needs `labels` (the right choice's index) in the batch",
                          hint="fine-tune it with the `choice` task")
        scores = self.scores(features, batch)  # (B, K)
        labels = labels.reshape(-1).long()  # (B,)
        k = scores.shape[1]
        if labels.device.type == "cpu":  # on a GPU a bad index is an unreadable device assert
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= k:
                raise DataError(f"target choice: label {lo if lo < 0 else hi} is outside "
                                f"0..{k - 1}", hint="a label is the index of the right choice")
        loss = F.cross_entropy(scores, labels)
        with torch.no_grad():
            count = torch.tensor(float(labels.numel()), device=scores.device)
            acc = (scores.argmax(-1) == labels).sum().float() / count.clamp(min=1.0)
        return TargetOutput(loss, {"acc": acc, "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores(features, batch)  # (B, K)
