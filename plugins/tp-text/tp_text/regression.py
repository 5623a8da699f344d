"""Target `regression` and task `regression`: one real number per sequence (STS-B, ratings).

The target (mean squared error):

    hidden (B, T, H) -> pooling over the real tokens (as `cls`) -> [pooler: dense + tanh]
    -> dropout -> linear (1, H) -> score (B,) -> MSE against the float `labels` (B,)
"""

from __future__ import annotations

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


class RegressionTarget(ClsTarget):
    """Predict a score per sequence; metrics `mse` and `count`. Shares `cls`'s pooling and
    pooler (`logits`), with one output and no label count."""

    class Config(HeadConfig):
        """`cls`'s pooling and pooler; one output."""

    def __init__(self, config: Config, ctx: BuildContext) -> None:  # type: ignore[override]
        nn.Module.__init__(self)
        self.config = config  # type: ignore[assignment]
        self.build_head(ctx, config.pooler, 1)

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


class RegressionTaskConfig(TaskConfig):
    pooling: PoolingKind | None = Field(None, description=POOLING_HELP)
    pooler: bool = Field(True, description="BERT's pooler (dense + tanh) before the output")


class RegressionTask(PooledHead):
    """Task `regression`: a real-valued score for a text or a text pair (files as the
    `classification` task's, the label a number); scored by Pearson and Spearman correlation
    and the mean squared error (reported negated, `neg_mse`, so that larger is better)."""

    Config: ClassVar[type[TaskConfig]] = RegressionTaskConfig
    metrics: tuple[str, ...] = ("pearson", "spearman", "neg_mse")

    def __init__(self, config: RegressionTaskConfig, variant: str | None) -> None:
        self.config = config

    def load(self, data: TaskData) -> Splits:
        splits = ClassificationTask(ClassificationConfig(), None).load(data)
        for exs in [splits.train, *splits.dev.values(), *splits.test.values()]:
            for e in exs:
                if e.label is None:
                    continue
                try:
                    e.label = float(e.label)
                except ValueError:
                    raise DataError(f"{e.source}: label {e.label!r} is not a number",
                                    hint="a regression file holds one real number per "
                                    "example in its label column") from None
        return splits

    def fit(self, train: list[Example]) -> None:
        """Nothing to learn from the training labels."""

    def check(self, name: str, examples: list[Example]) -> None:
        """Any real number is a valid score."""

    def state(self) -> dict[str, Any]:
        return {}

    def target(self) -> dict[str, Any]:
        return {"regression": {"pooling": self.pooling, "pooler": self.config.pooler}}

    def head_sources(self) -> dict[str, str]:
        return {"targets.regression.pooler.": "targets.sp.pooler."}

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        rows = encode_texts(examples, tokenizer, max_length, "regression")
        for row, e in zip(rows, examples):
            if with_labels and e.label is not None:
                row["labels"] = torch.tensor(float(e.label))
        return rows

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        return [{"id": e.guid, "score": float(s)} for e, s in zip(examples, output.tolist())]

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tpcli.metrics import pearson, spearman

        pred = [p["score"] for p in predictions]
        gold = [float(e.label) for e in examples]
        mse = sum((a - b) ** 2 for a, b in zip(pred, gold)) / max(len(gold), 1)
        return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold),
                "neg_mse": -mse}
