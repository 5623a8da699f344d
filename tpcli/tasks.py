"""Downstream tasks: what `tp finetune` trains and `tp infer` predicts.

A task is registered by a plugin (`tp_register_tasks`) and replaces the pre-training target: it
reads its data (with errors naming file and line), fits what training data decides (a label
list), encodes examples into tensors for the model, names the target that becomes the model's
head, turns the head's outputs into per-example predictions, and scores them. The fine-tuning
loop (`tpcli.finetune`) is generic over all of that.

    task = registry.get("task", name)(config, variant)    # `glue/sst2`: name glue, variant sst2
    data = task.load(TaskData(train=..., dev=..., test=..., source=...))
    task.fit(data.train)                                   # e.g. the label list
    model.target <- task.target()                          # {"cls": {"labels": 3, ...}}
    rows = task.encode(examples, tokenizer, max_length)    # dicts of (T,) / () tensors
    preds = task.decode(model.predict(batch)[name], ...)   # one dict per example
    scores = task.evaluate(preds, examples)                # {"accuracy": 0.91, ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from tpcli.errors import TpError


class TaskConfig(BaseModel):
    """Base of every task's options (strict: an unknown option is an error)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class Example:
    """One input of a task: its texts (or any fields), its gold answer when known, and where it
    came from (`file:line`) for error messages."""

    guid: str
    fields: dict[str, Any]
    label: Any = None
    source: str = ""


@dataclass
class TaskData:
    """Where the data is: files named on the command line and/or a dataset folder or source
    (e.g. a GLUE folder, or `hub`)."""

    train: str | None = None
    dev: list[str] = field(default_factory=list)
    test: str | None = None
    source: str | None = None


@dataclass
class Splits:
    """A task's examples: train, and named dev / test sets (MNLI has two of each)."""

    train: list[Example] = field(default_factory=list)
    dev: dict[str, list[Example]] = field(default_factory=dict)
    test: dict[str, list[Example]] = field(default_factory=dict)

    @classmethod
    def read(cls, data: TaskData, read: Callable[[str, bool], list[Example]]) -> Splits:
        """The files of `data` through a task's reader `read(path, labelled)`: gold labels are
        required in train and dev, optional in test. Sets are named by file stem (the whole
        path when two dev files share a stem)."""
        if data.source:  # these tasks read files only: a dataset folder would be ignored
            raise TpError(f"this task reads --train/--dev/--test files; --data {data.source} "
                          "would be ignored", hint="pass the files with --train, --dev and "
                          "--test instead of --data")
        splits = cls()
        if data.train:
            splits.train = read(data.train, True)
        for path in data.dev:
            name = Path(path).stem if Path(path).stem not in splits.dev else path
            splits.dev[name] = read(path, True)
        if data.test:
            splits.test[Path(data.test).stem] = read(data.test, False)
        return splits


class Task(Protocol):
    """What a registered task provides (see `tp_register_tasks`)."""

    Config: ClassVar[type[TaskConfig]]
    metrics: tuple[str, ...]  # what `evaluate` returns; the first selects the best checkpoint

    def __init__(self, config: TaskConfig, variant: str | None) -> None: ...

    def load(self, data: TaskData) -> Splits:
        """Read the examples; a DataError names the file, line and fix."""
        ...

    def fit(self, train: list[Example]) -> None:
        """Learn what the training data decides (the label list); check nothing else here."""
        ...

    def check(self, name: str, examples: list[Example]) -> None:
        """Refuse gold answers the fitted task cannot represent (a label unseen in training),
        naming the example's file and line."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-able state from `fit`, saved with the checkpoint; `restore` reads it back."""
        ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def target(self) -> dict[str, Any]:
        """The model's target section for this task, e.g. {"cls": {"labels": 3}}."""
        ...

    def head_sources(self) -> dict[str, str]:
        """Key prefixes of the head that may start from a pre-trained target's weights, e.g.
        {"targets.cls.pooler.": "targets.sp.pooler."} (BERT's pooler)."""
        ...

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]: ...

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        """The head's `predict` output for a batch -> one JSON-able prediction per example."""
        ...

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]: ...


def split_task_name(spec: str) -> tuple[str, str | None]:
    """`glue/sst2` -> ("glue", "sst2"); `classification` -> ("classification", None)."""
    name, _, variant = spec.partition("/")
    return name, (variant or None)
