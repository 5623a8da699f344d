"""Sequence classification target (BERT fine-tuning, InferSent, ViT, ViLT's ITM).

    hidden (B, T, H) -> pooling over the real tokens (first | last | mean | max) -> (B, H)
        [or the stack's own pooling, features.pooled, when the recipe gives one]
    -> [pooler: dense (H, H) -> tanh]  (BERT's pooler, optional)
    -> dropout -> classifier (C, H) -> logits (B, C) -> cross-entropy against `labels` (B,)
A two-stream (siamese) model's pooled u and v become [u, v, |u - v|, u * v] (B, 4H) first.

A sentence pair is one packed row ([CLS] a [SEP] b [SEP]) whose attention mask covers both
sentences, so the pooling spans the whole pair; padding never contributes (either side).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import DataError, TpError
from tpcli.layers.dropout import Dropout
from tpcli.layers.pooling import PoolingKind, pool
from tpcli.model.module import BuildContext, Features, TargetConfig, TargetOutput


class HeadConfig(TargetConfig):
    """The options of a head over one vector per sequence (cls, regression, multilabel)."""

    pooling: PoolingKind = Field(
        "first", description="how the hidden states become one vector: the first or last "
        "real token, or the mean or element-wise max over the real tokens (ignored when the "
        "stack has its own pooling: features.pooled is used as is)")
    pooler: bool = Field(
        False, description="BERT's pooler (dense H->H + tanh) before the output layer")


class ClsTarget(nn.Module):
    """Classify each sequence into one of `labels` classes; metrics `acc` and `count`."""

    class Config(HeadConfig):
        labels: int = Field(2, ge=2, description="number of classes")

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        super().__init__()
        self.config = config
        self._labels_checked = False
        self.build_head(ctx, config.pooler, config.labels)

    def build_head(self, ctx: BuildContext, pooler: bool, outputs: int) -> None:
        """[pooler (H, H)] -> dropout -> classifier (outputs, H): shared by the heads that
        reuse `logits` (regression, multilabel)."""
        h = ctx.hidden_size
        # two streams (a siamese model: SBERT, TencentPretrain's siamese LSTM) are compared as
        # [u, v, |u - v|, u * v] of their pooled vectors, so the classifier reads 4 widths
        self.siamese = len(ctx.stream_sizes) == 2
        if self.siamese:
            h = ctx.stream_sizes["stream_0"]
            if ctx.stream_sizes["stream_1"] != h:
                raise TpError(f"a classifier over two streams needs them equally wide; they are "
                              f"{ctx.stream_sizes['stream_0']} and {ctx.stream_sizes['stream_1']}",
                              hint="give stream_0 and stream_1 the same hidden_size")
        self.pooler = nn.Linear(h, h) if pooler else None
        self.dropout = Dropout(ctx.dropout)
        self.classifier = nn.Linear(4 * h if self.siamese else h, outputs)

    @property
    def reads_first_token(self) -> bool:
        """Reads only each sequence's first real token (first pooling): the model may then skip
        the other positions in the encoder's last layer."""
        return self.config.pooling == "first"

    def logits(self, features: Features) -> torch.Tensor:
        """Features -> (B, C)."""
        if self.siamese:
            u, v = (self._vector(f) for f in features.streams)  # (B, H) each
            return self.classifier(self.dropout(torch.cat([u, v, (u - v).abs(), u * v], -1)))
        return self.classifier(self.dropout(self._vector(features)))  # (B, C)

    def _vector(self, features: Features) -> torch.Tensor:
        """One sequence's Features -> (B, H), through the pooler when there is one."""
        if features.pooled is not None:  # a recipe-level pooling takes precedence
            x = features.pooled  # (B, H)
        elif features.hidden is not None:
            x = pool(self.config.pooling, features.hidden, features.mask)  # (B, H)
        else:
            raise TpError("target cls needs hidden states (or a pooling) from the encoder",
                          hint="give the model an encoder, or a pooling after it")
        if self.pooler is not None:
            x = torch.tanh(self.pooler(x))
        return x

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("labels")
        if labels is None:
            raise TpError("target cls needs `labels` (one class index per sequence) in the batch",
                          hint="use a data processor that reads labelled text (e.g. `cls`)")
        c = self.config.labels
        if labels.is_floating_point() and labels.dim() == 2:
            return self.soft(features, labels)  # mixup / cutmix / label smoothing targets
        labels = labels.reshape(-1).long()  # (B,)
        # checked here, as on a GPU a bad index is an unreadable device-side assert inside
        # cross_entropy; there only the first batch (each read waits for the device), which
        # finds a class count that does not fit the dataset
        if labels.device.type == "cpu" or not self._labels_checked:
            self._labels_checked = True
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= c:
                raise DataError(f"target cls: label {lo if lo < 0 else hi} is outside "
                                f"0..{c - 1}", hint=f"set model.target.cls.labels to the number "
                                f"of classes (now {c}), or fix the dataset's labels")
        logits = self.logits(features)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            count = torch.tensor(float(labels.numel()), device=logits.device)
            acc = (logits.argmax(dim=-1) == labels).sum().float() / count.clamp(min=1.0)
        return TargetOutput(loss, {"acc": acc, "count": count})

    def soft(self, features: Features, targets: torch.Tensor) -> TargetOutput:
        """Cross-entropy against soft targets (B, C) (each row sums to 1: mixed or smoothed
        labels); `acc` counts the argmax of the target as the class."""
        c = self.config.labels
        if targets.shape[1] != c:
            raise DataError(f"target cls: soft labels have {targets.shape[1]} classes, the head "
                            f"has {c}", hint=f"set model.target.cls.labels to {targets.shape[1]}")
        logits = self.logits(features)  # (B, C)
        loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        with torch.no_grad():
            count = torch.tensor(float(targets.shape[0]), device=logits.device)
            hits = (logits.argmax(dim=-1) == targets.argmax(dim=-1)).sum().float()
        return TargetOutput(loss, {"acc": hits / count.clamp(min=1.0), "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(features)  # (B, C)
