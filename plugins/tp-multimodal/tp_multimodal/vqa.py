"""Visual question answering head (ViLT on VQAv2): scores for every answer of a fixed list.

    hidden (B, T, H) -> first position -> pooler: dense (H, H) -> tanh
        -> Linear (2H, H) -> LayerNorm(2H) -> GELU -> Linear (answers, 2H) -> logits (B, A)
        -> binary cross-entropy against soft scores `vqa_scores` (B, A), times A

HF `ViltForQuestionAnswering`'s head (its LayerNorm keeps PyTorch's eps 1e-5) and loss: VQAv2
gives each answer a score in [0, 1] (how many annotators gave it), so the target is multi-label
and soft; HF sums the mean BCE over the answers (`* num_labels`). `acc` is VQA's usual "score
of the top answer" averaged over the questions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.data.batch import BatchKey
from tpcli.errors import DataError, TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput


class VqaTarget(nn.Module):
    """Answer scores from the first token; metrics `acc` (top answer's score) and `count`."""

    class Config(TargetConfig):
        answers: int = Field(3129, ge=1, description="answers scored (HF num_labels; VQAv2: "
                             "3129)")

    reads_first_token = True

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        h = ctx.hidden_size
        self.pooler = nn.Linear(h, h)
        self.hidden = nn.Linear(h, 2 * h)
        self.norm = nn.LayerNorm(2 * h)  # HF's nn.LayerNorm(2H): eps 1e-5, not the model's
        self.classifier = nn.Linear(2 * h, config.answers)
        self.inputs: tuple[BatchKey, ...] = (BatchKey(
            "vqa_scores", "float32", (config.answers,), low=0.0, high=1.0,
            description="each answer's score in [0, 1] (VQAv2: min(1, annotators / 3))"),)

    def logits(self, features: Features) -> torch.Tensor:
        if features.hidden is None:
            raise TpError("target vqa needs hidden states from the encoder",
                          hint="give the model an encoder (ViLT: transformer)")
        x = torch.tanh(self.pooler(features.hidden[:, 0]))  # (B, H)
        return self.classifier(F.gelu(self.norm(self.hidden(x))))  # (B, A)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        scores = batch.get("vqa_scores")
        if scores is None:
            raise TpError("target vqa needs `vqa_scores` (B, answers) in the batch",
                          hint="use a VQA data processor, which scores each answer")
        a = self.config.answers
        if scores.dim() != 2 or scores.shape[1] != a:
            raise DataError(f"target vqa: vqa_scores have shape {tuple(scores.shape)}, "
                            f"expected (batch, {a})",
                            hint="set model.target.vqa.answers to the data's answer count")
        logits = self.logits(features)  # (B, A)
        scores = scores.to(torch.float32)
        loss = F.binary_cross_entropy_with_logits(logits.float(), scores) * a
        with torch.no_grad():
            count = torch.tensor(float(scores.shape[0]), device=logits.device)
            top = scores.gather(1, logits.argmax(dim=-1, keepdim=True)).sum()
        return TargetOutput(loss, {"acc": top / count.clamp(min=1.0), "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(features)  # (B, A)
