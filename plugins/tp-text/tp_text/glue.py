"""Task `glue`: the nine GLUE tasks (`--task glue/sst2`, or `glue/all`), scored as the paper does.

Data comes from a local copy of the original GLUE folders or from the Hub dataset `nyu-mll/glue`
(`--data GLUE_DIR` or `--data hub`; `tp_text.glue_data`). Classification tasks train the `cls`
head, STS-B the `regression` head; inputs are packed as the `classification` task packs them.
Metrics (`tpcli.metrics.glue_metrics`): CoLA Matthews correlation; SST-2, QNLI, RTE, WNLI and
MNLI (matched and mismatched dev sets) accuracy; MRPC and QQP F1 and accuracy; STS-B Pearson and
Spearman. The first metric of a task selects its best checkpoint.

`summary` lays the results of `glue/all` out as the paper's Table 3: MNLI (matched) QNLI QQP RTE
SST MRPC CoLA STS and their average (accuracy for QQP and MRPC, Pearson for STS-B, as in the
paper's columns; WNLI is reported beside, not averaged).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from tpcli.errors import DataError, TpError
from tpcli.layers.pooling import PoolingKind
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData
from tp_text.classification import POOLING_HELP, PooledHead, encode_texts
from tp_text.glue_data import GLUE_TASKS, get_task, read_glue, read_tsv

# the paper's Table 3 columns: (task, dev set, metric)
PAPER_COLUMNS = (("MNLI", "mnli", "dev_matched", "accuracy"), ("QNLI", "qnli", "dev", "accuracy"),
                 ("QQP", "qqp", "dev", "accuracy"), ("RTE", "rte", "dev", "accuracy"),
                 ("SST", "sst2", "dev", "accuracy"), ("MRPC", "mrpc", "dev", "accuracy"),
                 ("CoLA", "cola", "dev", "matthews_corr"), ("STS", "stsb", "dev", "pearson"))


class GlueConfig(TaskConfig):
    pooling: PoolingKind | None = Field(None, description=POOLING_HELP)
    pooler: bool = Field(True, description="BERT's pooler (dense + tanh) before the output")
    skip_malformed: bool = Field(
        False, description="skip TSV rows with the wrong number of fields (the first QQP "
        "release has some) instead of stopping at the first")


class GlueTask(PooledHead):
    """One GLUE task, chosen by the variant: glue/cola, glue/sst2, ..., glue/all."""

    Config: ClassVar[type[TaskConfig]] = GlueConfig
    VARIANTS: ClassVar[tuple[str, ...]] = tuple(GLUE_TASKS)

    def __init__(self, config: GlueConfig, variant: str | None) -> None:
        if variant is None:
            raise TpError("task glue needs the GLUE task: glue/<name>",
                          hint=f"one of {', '.join('glue/' + v for v in GLUE_TASKS)}, or "
                          "glue/all")
        self.config = config
        self.spec = get_task(variant)
        self.metrics: tuple[str, ...] = self.spec.metrics
        self.labels: list[str] = list(self.spec.labels or [])

    def load(self, data: TaskData) -> Splits:
        files = [f"--{k} {v}" for k, v in (("train", data.train), ("dev", ", ".join(data.dev)),
                                           ("test", data.test)) if v]
        if data.source and files:
            raise TpError(f"GLUE {self.spec.name} reads its train and dev sets from --data "
                          f"{data.source}; {', '.join(files)} would be ignored",
                          hint="give --data (the GLUE folders or `hub`) alone; tp infer "
                          "predicts a file in GLUE's layout")
        if data.train or data.dev:  # (with --data they were refused above)
            raise TpError(f"GLUE {self.spec.name} reads the GLUE folders, not "
                          f"{', '.join(files)}", hint="pass --data GLUE_DIR or --data hub "
                          "(or --task classification for files of your own)")
        if data.test and not data.source:  # `tp infer`: one file in the task's own layout
            path = Path(data.test)
            if not path.is_file():
                raise DataError(f"data file {path} does not exist",
                                hint=f"pass a {self.spec.folder} file in GLUE's layout")
            exs = read_tsv(self.spec, path, path.stem, skip_malformed=self.config.skip_malformed)
            return Splits(test={path.stem: [self._example(e) for e in exs]})
        if not data.source:
            raise DataError(f"GLUE {self.spec.name}: no data given",
                            hint="pass --data GLUE_DIR (the original GLUE folders, e.g. from "
                            "download_glue_data.py) or --data hub (the Hub dataset "
                            "nyu-mll/glue, cached)")

        def read(split: str) -> dict[str, list[Example]]:
            got = read_glue(self.spec.name, split, data.source,
                            skip_malformed=self.config.skip_malformed)
            return {name: [self._example(e) for e in exs] for name, exs in got.items()}

        train = read("train")
        return Splits(train=next(iter(train.values())), dev=read("dev"))

    @staticmethod
    def _example(e: Any) -> Example:
        return Example(e.guid, {"text_a": e.text_a, "text_b": e.text_b}, e.label, e.source)

    def fit(self, train: list[Example]) -> None:
        """Nothing to learn: GLUE's label sets are fixed (the reader refuses others)."""

    def check(self, name: str, examples: list[Example]) -> None:
        """The reader already refused labels outside the task's set, naming file and line."""

    def state(self) -> dict[str, Any]:
        return {}

    def target(self) -> dict[str, Any]:
        head = {"pooling": self.pooling, "pooler": self.config.pooler}
        if self.spec.is_regression:
            return {"regression": head}
        return {"cls": {"labels": len(self.labels), **head}}

    def head_sources(self) -> dict[str, str]:
        name = "regression" if self.spec.is_regression else "cls"
        return {f"targets.{name}.pooler.": "targets.sp.pooler."}

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        rows = encode_texts(examples, tokenizer, max_length, f"glue/{self.spec.name}")
        if with_labels:
            index = {label: k for k, label in enumerate(self.labels)}
            for row, e in zip(rows, examples):
                if e.label is None:
                    continue
                row["labels"] = (torch.tensor(float(e.label)) if self.spec.is_regression
                                 else torch.tensor(index[str(e.label)]))
        return rows

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        if self.spec.is_regression:
            return [{"id": e.guid, "score": float(s)} for e, s in zip(examples, output.tolist())]
        probs = torch.softmax(output, dim=-1)  # (B, C)
        return [{"id": e.guid, "label": self.labels[int(p.argmax())],
                 "probabilities": dict(zip(self.labels, map(float, p)))}
                for e, p in zip(examples, probs)]

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tpcli.metrics import glue_metrics

        if self.spec.is_regression:
            return glue_metrics(self.spec.name, [p["score"] for p in predictions],
                                [float(e.label) for e in examples])
        index = {label: k for k, label in enumerate(self.labels)}
        return glue_metrics(self.spec.name, [index[p["label"]] for p in predictions],
                            [index[str(e.label)] for e in examples])

    @staticmethod
    def summary(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[float | None]]:
        """The paper's Table 3 row (percent) from `glue/all`'s per-task results; AVG over the
        columns present (all eight for a full run)."""
        values: list[float | None] = []
        for _, task, dev, metric in PAPER_COLUMNS:
            r = results.get(task)
            values.append(None if r is None else 100 * r["dev"][dev][metric]["mean"])
        have = [v for v in values if v is not None]
        return ([c[0] for c in PAPER_COLUMNS] + ["AVG"],
                values + [sum(have) / len(have) if have else None])
