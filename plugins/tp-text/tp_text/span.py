"""Extractive span target (BERT on SQuAD): where the answer starts and ends in each row.

    hidden (B, T, H) -> linear (H, 2) -> start logits (B, T), end logits (B, T)
    padding -> a large negative (it never wins a softmax)
    loss = (cross-entropy(start, start_positions) + cross-entropy(end, end_positions)) / 2

A row is one window of a question + context (`tp_text.qa`); position 0 ([CLS]) is the gold
start and end when the answer is not inside that window, so every row has a label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tpcli.errors import DataError, TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput

NEG = -1e4  # masked logits: far below any real one, still finite in fp16


class SpanTarget(nn.Module):
    """Start/end logits per token; metrics `acc` (start and end both right) and `count`."""

    class Config(TargetConfig):
        pass

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.qa_outputs = nn.Linear(ctx.hidden_size, 2)

    def logits(self, features: Features) -> torch.Tensor:
        """Features -> (B, T, 2): start and end logits, padding set to NEG."""
        if features.hidden is None:
            raise TpError("target span needs per-token hidden states from the encoder",
                          hint="use a single-stream model with an encoder (not a pooling only)")
        out = self.qa_outputs(features.hidden).float()  # (B, T, 2)
        if features.mask is not None:
            out = out.masked_fill(~features.mask.bool().unsqueeze(-1), NEG)
        return out

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        start, end = batch.get("start_positions"), batch.get("end_positions")
        if start is None or end is None:
            raise TpError("target span needs `start_positions` and `end_positions` (one token "
                          "index per row) in the batch",
                          hint="fine-tune it with the `qa` task, which encodes them")
        logits = self.logits(features)  # (B, T, 2)
        t = logits.shape[1]
        start, end = start.reshape(-1).long(), end.reshape(-1).long()  # (B,), (B,)
        if start.device.type == "cpu":  # on a GPU a bad index is an unreadable device assert
            lo, hi = int(torch.minimum(start, end).min()), int(torch.maximum(start, end).max())
            if lo < 0 or hi >= t:
                raise DataError(f"target span: answer position {lo if lo < 0 else hi} is "
                                f"outside the row (0..{t - 1})",
                                hint="positions index the row's tokens; 0 ([CLS]) means "
                                "'not in this window'")
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # (B, T) each
        loss = (F.cross_entropy(start_logits, start) + F.cross_entropy(end_logits, end)) / 2
        with torch.no_grad():
            count = torch.tensor(float(start.numel()), device=logits.device)
            hit = (start_logits.argmax(-1) == start) & (end_logits.argmax(-1) == end)
            acc = hit.sum().float() / count.clamp(min=1.0)
        return TargetOutput(loss, {"acc": acc, "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(features)  # (B, T, 2)
