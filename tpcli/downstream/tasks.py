"""Downstream tasks: what `tp finetune` trains and `tp infer` predicts.

A task is registered by a plugin (`tp_register_tasks`) and replaces the pre-training target: it
reads its data (with errors naming file and line), fits what training data decides (a label
list), encodes examples into tensors for the model, names the target that becomes the model's
head, turns the head's outputs into per-example predictions, and scores them. The fine-tuning
loop (`tpcli.downstream.finetune`) is generic over all of that.

    task = registry.get("task", name)(config, variant)    # `glue/sst2`: name glue, variant sst2
    data = task.load(TaskData(train=..., dev=..., test=..., source=...))
    task.fit(data.train)                                   # e.g. the label list
    model.target <- task.target()                          # {"cls": {"labels": 3, ...}}
    rows = task.encode(examples, tokenizer, max_length)    # dicts of (T,) / () tensors
    preds = task.decode(model.predict(batch)[name], ...)   # one dict per example
    scores = task.evaluate(preds, examples)                # {"accuracy": 0.91, ...}
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from tpcli.errors import DataError, TpError
from tpcli.plugins.requests import TaskData


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
        def examples(path: str, labelled: bool, split: str) -> list[Example]:
            got = read(path, labelled)
            if not got:  # an empty file would otherwise surface later as "no training examples"
                raise no_examples(path, split)
            return got

        splits = cls()
        if data.train:
            splits.train = examples(data.train, True, "training")
        for path in data.dev:
            name = Path(path).stem if Path(path).stem not in splits.dev else path
            splits.dev[name] = examples(path, True, "dev")
        if data.test:
            splits.test[Path(data.test).stem] = examples(data.test, False, "test")
        return splits


def data_file(path: str, formats: str) -> Path:
    """`path` as a Path when there is something to read there: a file, or a pipe or device
    (`--train <(zcat train.tsv.gz)` is a pipe); a DataError naming what is wrong otherwise.
    `formats` names what to pass, e.g. "TSV (header: label, text_a) or JSONL file"."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data file {path} is a folder, not a file",
                        hint=f"pass a {formats} (a file, not the folder that holds it)")
    if not p.exists():
        raise DataError(f"data file {path} does not exist", hint=f"pass an existing {formats}")
    return p


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))


def no_examples(path: str, split: str) -> DataError:
    """The error for a data file that was read and held no example, saying why."""
    try:
        st = os.stat(path)
        mode, size = st.st_mode, st.st_size
    except OSError:  # gone since it was read: describe it as a file with no examples
        mode, size = stat.S_IFREG, 1
    kind = next((name for test, name in _KINDS if test(mode)), None)
    if kind is not None:
        why = f"it is {kind}, not a regular file, and reading it gave nothing"
    elif size == 0:
        why = "the file is empty"
    else:
        why = "nothing in it is an example (a header alone, or blank lines)"
    return DataError(f"{split} file {path} holds no examples: {why}",
                     hint="pass a file with at least one example in the task's format")


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

    # optional: `bind(recipe, registry)`, called before `fit` with the model's recipe and the
    # run's registry, for a task whose inputs or head depend on the model (text2text reads the
    # processor's source layout; pooled heads choose their default pooling from the encoder)
    # optional: `train_dataset(examples, seed) -> ExampleDataset`, the training set as a dataset
    # whose examples are a function of (seed, epoch, index), for a task that augments them
    # (images: crops, flips, mixup); without it the training rows are `encode`d once
    # optional: `predict(model, examples, rows, tokenizer, device, batch_size, precision)`, for a
    # task that runs the model itself (generation; CLIP's towers one at a time)
    # optional: `write(predictions, out) -> dict`, for a task whose `tp infer` output is not
    # one JSONL file (embeddings as .npy): it writes `out` atomically and returns what the
    # summary adds

    def batch_keys(self, rows: list[dict[str, torch.Tensor]], tokenizer: Any
                   ) -> tuple[Any, ...]:
        """The `tpcli.data.batch.BatchKey`s of the rows `encode` makes: how they are padded
        and collated, and what throughput counts."""
        ...

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
