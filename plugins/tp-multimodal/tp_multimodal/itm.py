"""Image-text matching (ViLT's ITM): does this text describe this image?

    hidden (B, T, H) -> first position -> pooler: dense (H, H) -> tanh -> classifier (2, H)
        -> logits (B, 2) -> cross-entropy against `itm_labels` (B,) (1 = matched, 0 = not)

The first position is the joined sequence's first token, the text's [CLS] (`word_patch` puts the
text first), as in ViLT and HF `ViltPooler`. The pooler is HF's `vilt.pooler`; the classifier is
the original ViLT's `itm_score.fc`.

The `rank` target (tp_multimodal.rank) is the same head with one output, a matching score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.errors import DataError, TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput


class ItmTarget(nn.Module):
    """Matched or not, from the first token; metrics `acc` and `count` over the pairs."""

    Config = TargetConfig
    outputs = 2  # [not matched, matched]; `rank`: one score
    name = "itm"
    reads_first_token = True  # the model may skip the other positions of the last layer

    def __init__(self, config: TargetConfig, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        h = ctx.hidden_size
        self.pooler = nn.Linear(h, h)
        self.classifier = nn.Linear(h, self.outputs)
        self.inputs: tuple[BatchKey, ...] = (BatchKey(
            "itm_labels", "int64", (), low=0, high=2,
            description="1 = the text belongs to the image, 0 = a mismatched pair"),)

    def pooled(self, features: Features) -> torch.Tensor:
        """Features -> (B, H): tanh(dense(first token))."""
        if features.hidden is None:
            raise TpError(f"target {self.name} needs hidden states from the encoder",
                          hint="give the model an encoder (ViLT: transformer)")
        return torch.tanh(self.pooler(features.hidden[:, 0]))  # (B, H)

    def logits(self, features: Features) -> torch.Tensor:
        return self.classifier(self.pooled(features))  # (B, outputs)

    def read_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, 1): the first position, the only hidden state the loss reads; None without
        labels."""
        labels = batch.get("itm_labels")
        return None if labels is None else torch.ones(labels.shape[0], 1, dtype=torch.bool,
                                                      device=labels.device)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("itm_labels")
        if labels is None:
            raise TpError(f"target {self.name} needs `itm_labels` (1 = matched, 0 = not) in "
                          "the batch",
                          hint="use an image-text data processor that makes mismatched pairs")
        labels = labels.reshape(-1).long()  # (B,)
        if labels.device.type == "cpu" and labels.numel() and \
                (int(labels.min()) < 0 or int(labels.max()) > 1):
            raise DataError(f"target {self.name}: itm_labels hold {int(labels.min())}..."
                            f"{int(labels.max())}; they must be 0 or 1",
                            hint="label a matched pair 1 and a mismatched one 0")
        logits = self.logits(features)  # (B, 2) or (B, 1)
        if self.outputs == 1:  # a score: matched when positive
            loss = F.binary_cross_entropy_with_logits(logits[:, 0].float(), labels.float())
            guess = (logits[:, 0] > 0).long()  # (B,)
        else:
            loss = F.cross_entropy(logits.float(), labels)
            guess = logits.argmax(dim=-1)
        with torch.no_grad():
            count = torch.tensor(float(labels.numel()), device=logits.device)
            acc = (guess == labels).sum().float() / count.clamp(min=1.0)
        return TargetOutput(loss, {"acc": acc, "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(features)  # (B, 2): [not matched, matched]; rank: (B, 1)
