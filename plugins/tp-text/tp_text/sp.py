"""Sentence prediction target (BERT's next-sentence / ALBERT's sentence-order prediction).

    [CLS] hidden (or the stack's pooling) -> pooler dense (H, H) -> tanh -> classifier (C, H)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput


class SpTarget(nn.Module):
    """Sentence-pair classification on the first token (NSP / SOP); metric `acc`."""

    class Config(TargetConfig):
        classes: int = Field(2, ge=2, description="number of classes (2: is-next / not-next)")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.pooler = nn.Linear(ctx.hidden_size, ctx.hidden_size)
        self.classifier = nn.Linear(ctx.hidden_size, config.classes)

    def _logits(self, features: Features) -> torch.Tensor:
        # BERT pools the first token; a recipe-level pooling (features.pooled) takes precedence
        if features.pooled is not None:
            first = features.pooled
        elif features.hidden is not None:
            first = features.hidden[:, 0]
        else:
            raise TpError("target sp needs hidden states (or a pooling) from the encoder")
        return self.classifier(torch.tanh(self.pooler(first)))  # (B, C)

    def read_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, 1): the first position, the only hidden state the loss reads (without a
        pooling: a model with one never selects positions); None without labels."""
        labels = batch.get("sp_labels")
        return None if labels is None else labels.new_ones(labels.shape[0], 1, dtype=torch.bool)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("sp_labels")
        if labels is None:
            raise TpError(
                "target sp needs `sp_labels` in the batch",
                hint="use a data processor that builds sentence pairs (e.g. `bert`)",
            )
        logits = self._logits(features)
        loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            acc = (logits.argmax(dim=-1) == labels).float().mean()
        return TargetOutput(loss, {"acc": acc})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._logits(features)  # (B, C)
