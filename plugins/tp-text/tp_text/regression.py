"""Sequence regression target (STS-B): one real number per sequence, mean squared error.

    hidden (B, T, H) -> pooling over the real tokens (as `cls`) -> [pooler: dense + tanh]
    -> dropout -> linear (1, H) -> score (B,) -> MSE against the float `labels` (B,)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.layers.dropout import Dropout
from tpcli.layers.pooling import PoolingKind
from tpcli.module import BuildContext, Features, TargetConfig, TargetOutput
from tp_text.cls import ClsTarget


class RegressionTarget(ClsTarget):
    """Predict a score per sequence; metrics `mse` and `count`. Shares `cls`'s pooling and
    pooler (`logits`), with one output and no label count."""

    class Config(TargetConfig):
        pooling: PoolingKind = Field(
            "first", description="how the hidden states become one vector (as in `cls`)")
        pooler: bool = Field(
            False, description="BERT's pooler (dense H->H + tanh) before the output")

    def __init__(self, config: Config, ctx: BuildContext) -> None:  # type: ignore[override]
        nn.Module.__init__(self)
        self.config = config  # type: ignore[assignment]
        h = ctx.hidden_size
        self.pooler = nn.Linear(h, h) if config.pooler else None
        self.dropout = Dropout(ctx.dropout)
        self.classifier = nn.Linear(h, 1)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("labels")
        if labels is None:
            raise TpError("target regression needs float `labels` (one score per sequence)",
                          hint="use a task that reads scored text (e.g. glue/stsb)")
        score = self.logits(features).squeeze(-1).float()  # (B,)
        loss = F.mse_loss(score, labels.reshape(-1).float())
        count = torch.tensor(float(score.numel()), device=score.device)
        return TargetOutput(loss, {"mse": loss.detach(), "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(features).squeeze(-1)  # (B,)
