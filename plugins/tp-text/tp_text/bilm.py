"""Bidirectional language model target (ELMo, Peters et al., 2018).

    hidden (B, T, H) = [forward (H/2) | backward (H/2)]
    forward half at t  -> Linear(H/2, V) -> cross-entropy against token t+1
    backward half at t -> the same Linear  -> cross-entropy against token t-1
    loss = (CE_forward + CE_backward) / 2

Labels come from `input_ids`; a position predicts a neighbour only when both are real tokens
(`mlm_labels` are ignored, so the `mlm` processor with no input change can feed it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import TpError
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput

IGNORE = -100  # label of a position that is not predicted


def neighbour_labels(input_ids: torch.Tensor, mask: torch.Tensor | None,
                     step: int) -> torch.Tensor:
    """(B, T) -> labels (B, T): position t gets token t+step (step = +1 or -1) when t and t+step
    are both real tokens, else IGNORE."""
    labels = torch.full_like(input_ids, IGNORE)
    real = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
    both = torch.zeros_like(real)
    if step == 1:
        labels[:, :-1] = input_ids[:, 1:]
        both[:, :-1] = real[:, :-1] & real[:, 1:]
    else:
        labels[:, 1:] = input_ids[:, :-1]
        both[:, 1:] = real[:, 1:] & real[:, :-1]
    return labels.masked_fill(~both, IGNORE)  # (B, T)


class BilmTarget(nn.Module):
    """ELMo's biLM loss: the forward half predicts the next token, the backward half the previous.

    It needs an encoder whose output is [forward H/2 | backward H/2], where the forward half at t
    has seen only tokens <= t and the backward half only tokens >= t, e.g. the `bilstm` encoder
    (two independent directional stacks). With a fully visible encoder (a transformer) each
    half would see the token it predicts and the loss would be meaningless. Both directions share
    one output layer (ELMo ties the softmax of its two directions); it cannot be tied to the word
    embedding (H/2 vs H), so this target has no `tie_weights`. Metrics: `acc_fwd`, `acc_bwd`,
    `count` (predicted tokens per direction).
    """

    class Config(TargetConfig):
        bias: bool = Field(True, description="a learned bias (V) on the shared output layer")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        if ctx.hidden_size % 2 != 0:
            raise TpError(
                f"target bilm: hidden_size {ctx.hidden_size} is odd; it is split into a forward "
                "and a backward half",
                hint="choose an even model.hidden_size and a bidirectional encoder (bilstm)",
            )
        self.config = config
        self.half = ctx.hidden_size // 2
        self.output = nn.Linear(self.half, ctx.vocab_size, bias=config.bias)  # shared softmax

    def _direction(self, hidden: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """hidden (B, T, H/2), labels (B, T) -> (CE mean, #correct, #predicted)."""
        flat = labels.reshape(-1)  # (B*T,)
        rows = (flat != IGNORE).nonzero().squeeze(1)  # (N,)
        targets = flat.index_select(0, rows)  # (N,)
        logits = self.output(hidden.reshape(-1, self.half).index_select(0, rows))  # (N, V)
        n = targets.numel()
        # no predicted token gives 0 (still in the graph), not NaN
        loss = F.cross_entropy(logits.float(), targets, reduction="sum") / max(n, 1)
        correct = (logits.detach().argmax(dim=-1) == targets).sum().float()
        return loss, correct, n

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        if features.hidden is None or "input_ids" not in batch:
            raise TpError("target bilm needs `input_ids` in the batch and hidden states",
                          hint="give the model a bidirectional recurrent encoder (bilstm)")
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        fwd, bwd = features.hidden.split(self.half, dim=-1)  # (B, T, H/2) each
        loss_f, correct_f, n_f = self._direction(fwd, neighbour_labels(ids, mask, 1))
        loss_b, correct_b, n_b = self._direction(bwd, neighbour_labels(ids, mask, -1))
        loss = (loss_f + loss_b) / 2
        dev = features.hidden.device
        metrics = {
            "acc_fwd": correct_f / max(n_f, 1),
            "acc_bwd": correct_b / max(n_b, 1),
            "count": torch.tensor(float(n_f), device=dev),
        }
        return TargetOutput(loss, metrics)

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, 2, V): [..., 0, :] next-token logits, [..., 1, :] previous-token logits."""
        if features.hidden is None:
            raise TpError("target bilm needs hidden states from the encoder")
        fwd, bwd = features.hidden.split(self.half, dim=-1)
        return torch.stack([self.output(fwd), self.output(bwd)], dim=-2)
