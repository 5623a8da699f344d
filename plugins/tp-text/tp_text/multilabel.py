"""Target `multilabel` and task `multilabel`: any number of labels per text (topics, tags).

The target: pooled hidden state (as `cls`) -> [pooler] -> dropout -> linear (C) -> one logit
per label -> binary cross-entropy against the multi-hot `labels` (B, C); a label is predicted
when its probability exceeds `threshold` (the task's option, 0.5).

The task reads the `classification` task's files; the label column holds the example's labels
joined by `separator` (default `,`; an empty cell is no label), or a JSON list in JSONL files.
Scores: micro-F1 (selects the best checkpoint), macro-F1, subset accuracy (every label right)
and Hamming loss (reported as `neg_hamming_loss`, larger is better), as scikit-learn defines
them.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tpcli.errors import DataError, TpError
from tpcli.layers.pooling import PoolingKind
from tpcli.model.module import BuildContext, Features, TargetOutput
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData
from tp_text.classification import (POOLING_HELP, ClassificationConfig, ClassificationTask,
                                    PooledHead, encode_texts)
from tp_text.cls import ClsTarget, HeadConfig


class MultilabelTarget(ClsTarget):
    """One independent yes/no per label; metrics `acc` (per-label accuracy) and `count`."""

    class Config(HeadConfig):
        labels: int = Field(2, ge=1, description="number of labels")

    def __init__(self, config: Config, ctx: BuildContext) -> None:  # type: ignore[override]
        nn.Module.__init__(self)
        self.config = config  # type: ignore[assignment]
        self.build_head(ctx, config.pooler, config.labels)

    def forward(self, features: Features, batch: dict[str, torch.Tensor]) -> TargetOutput:
        labels = batch.get("labels")
        if labels is None or labels.dim() != 2:
            raise TpError("target multilabel needs multi-hot `labels` (B, labels) in the batch",
                          hint="use the `multilabel` task")
        logits = self.logits(features).float()  # (B, C)
        target = labels.float()
        loss = F.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            count = torch.tensor(float(target.numel()), device=logits.device)
            acc = ((logits > 0) == (target > 0.5)).sum().float() / count.clamp(min=1.0)
        return TargetOutput(loss, {"acc": acc, "count": count})

    def predict(self, features: Features, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(features)  # (B, C)

    @staticmethod
    def contract_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The contract test's batch with multi-hot labels (B, 2): class k -> label k set."""
        hot = torch.nn.functional.one_hot(batch["labels"].long(), 2).float()
        return {**batch, "labels": hot}


class MultilabelConfig(TaskConfig):
    labels: list[str] | None = Field(
        None, description="the label list, in order (default: sorted labels of the train file)")
    separator: str = Field(",", min_length=1, description="between labels in a TSV label cell")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="probability that predicts a label")
    pooling: PoolingKind | None = Field(None, description=POOLING_HELP)
    pooler: bool = Field(True, description="BERT's pooler (dense + tanh) before the output")


class MultilabelTask(PooledHead):
    """A set of labels for each example."""

    Config: ClassVar[type[TaskConfig]] = MultilabelConfig
    metrics: tuple[str, ...] = ("micro_f1", "macro_f1", "subset_accuracy", "neg_hamming_loss")

    def __init__(self, config: MultilabelConfig, variant: str | None) -> None:
        self.config = config
        self.labels: list[str] = list(config.labels or [])

    def _split(self, e: Example) -> list[str]:
        raw = e.label
        if isinstance(raw, list):
            return [str(x) for x in raw]
        text = str(raw).strip()
        if text.startswith("["):  # a JSON list in a JSONL file
            try:
                return [str(x) for x in json.loads(text)]
            except json.JSONDecodeError:
                raise DataError(f"{e.source}: labels {text!r} are not a JSON list",
                                hint='write ["a", "b"]') from None
        return [p.strip() for p in text.split(self.config.separator) if p.strip()]

    def load(self, data: TaskData) -> Splits:
        splits = ClassificationTask(ClassificationConfig(), None).load(data)
        for exs in [splits.train, *splits.dev.values(), *splits.test.values()]:
            for e in exs:
                if e.label is not None:
                    e.label = self._split(e)
        return splits

    def fit(self, train: list[Example]) -> None:
        if not self.labels:
            self.labels = sorted({x for e in train for x in e.label})
        self.check("train", train)

    def check(self, name: str, examples: list[Example]) -> None:
        known = set(self.labels)
        for e in examples:
            for x in e.label or []:
                if x not in known:
                    raise DataError(f"{e.source}: label {x!r} is not one of the {len(known)} "
                                    "training labels", hint="fix the label, or list every "
                                    "label in the task's `labels` option")

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def target(self) -> dict[str, Any]:
        return {"multilabel": {"labels": len(self.labels), "pooling": self.pooling,
                               "pooler": self.config.pooler}}

    def head_sources(self) -> dict[str, str]:
        return {"targets.multilabel.pooler.": "targets.sp.pooler."}

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        rows = encode_texts(examples, tokenizer, max_length, "multilabel")
        index = {x: k for k, x in enumerate(self.labels)}
        for row, e in zip(rows, examples):
            if with_labels and e.label is not None:
                hot = torch.zeros(len(self.labels))
                hot[[index[x] for x in e.label]] = 1.0
                row["labels"] = hot  # (C,)
        return rows

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        probs = torch.sigmoid(output)  # (B, C)
        return [{"id": e.guid,
                 "labels": [x for x, p in zip(self.labels, row) if p > self.config.threshold],
                 "probabilities": dict(zip(self.labels, map(float, row)))}
                for e, row in zip(examples, probs.tolist())]

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tpcli.metrics import multilabel_scores

        def hot(labels: list[str]) -> list[int]:
            return [int(x in labels) for x in self.labels]

        s = multilabel_scores([hot(p["labels"]) for p in predictions],
                              [hot(e.label) for e in examples])
        return {"micro_f1": s["micro_f1"], "macro_f1": s["macro_f1"],
                "subset_accuracy": s["subset_accuracy"],
                "neg_hamming_loss": -s["hamming_loss"]}
