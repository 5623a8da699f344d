"""Task `classification`: a label for a text or a text pair (sentiment, NLI, topic, ...).

Files: TSV with a header naming the columns (`label`, `text_a` or `text`/`sentence`/`sentence1`,
optional `text_b` or `text_pair`/`sentence2`: TencentPretrain's layout), or JSON lines with the
same keys. An input is packed as `[CLS] a [SEP] (b [SEP])` with segment ids 0 then 1 (the longer
text loses its end first); the head is the `cls` target (BERT's pooler, carried over from a
pre-trained `sp` target when the checkpoint has one). The label list is the sorted distinct
labels of the training file unless the task's `labels` option gives it; a dev or test label
outside it is an error naming its file and line.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_text.batch_keys import task_keys
from tpcli.data.dataset import special_id
from tpcli.errors import DataError
from tpcli.layers.pooling import PoolingKind, default_pooling
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData
from tp_text.bert_processor import trimmed_lengths
from tp_text.records import records

TEXT_A = ("text_a", "text", "sentence", "sentence1", "question")
TEXT_B = ("text_b", "text_pair", "sentence2")
POOLING_HELP = ("pooling of the head: first | last | mean | max real token (default: the last "
                "real token after a causal encoder, GPT-style; the first, [CLS], otherwise)")


class ClassificationConfig(TaskConfig):
    labels: list[str] | None = Field(
        None, description="the label list, in order (default: sorted labels of the train file)")
    pooling: PoolingKind | None = Field(None, description=POOLING_HELP)
    pooler: bool = Field(True, description="BERT's pooler (dense + tanh) before the classifier")


def causal_encoder(recipe: Any) -> bool:
    """True when every stack's encoder reads left to right (`mask: causal`, GPT-2, LLaMA)."""
    encoders = [s.encoder for s in recipe.model.stacks.values() if s.encoder is not None]
    return bool(encoders) and all(getattr(e.options, "mask", None) == "causal"
                                  for e in encoders)


class PooledHead:
    """What the tasks whose head pools one vector per input share: `bind(recipe, registry)`
    makes the default pooling follow the encoder's mask (`default_pooling`); the task's `pooling`
    option, when given, wins. Unbound, the default is a bidirectional encoder's (the first
    token)."""

    batch_keys = staticmethod(task_keys)  # text rows: keys by tp-text's naming convention

    config: Any
    _causal: bool = False

    def bind(self, recipe: Any, registry: Any) -> None:
        self._causal = causal_encoder(recipe)

    @property
    def pooling(self) -> PoolingKind:
        return self.config.pooling or default_pooling(self._causal)


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in columns), None)


def read_examples(path: str, need_label: bool) -> list[Example]:
    """TSV (header row) or JSON lines -> Examples with `fields` text_a / text_b."""
    rows = records(path, "TSV (header: label, text_a[, text_b]) or JSONL file")
    return [_example(path, n, row, need_label) for n, row in rows]


def _example(path: str, n: int, row: dict[str, Any], need_label: bool) -> Example:
    columns = list(row)
    a, b = _pick(columns, TEXT_A), _pick(columns, TEXT_B)
    if a is None:
        raise DataError(f"{path}:{n}: no text column (have {', '.join(columns)})",
                        hint=f"name the text column one of {', '.join(TEXT_A)}")
    label = row.get("label")
    if need_label and label is None:
        raise DataError(f"{path}:{n}: no label", hint="give every training example a `label`")
    return Example(str(row.get("id", row.get("guid", n))),
                   {"text_a": str(row[a]), "text_b": None if b is None else str(row[b])},
                   None if label is None else str(label), f"{path}:{n}")


def encode_texts(examples: list[Example], tokenizer: Any, max_length: int, task: str
                 ) -> list[dict[str, torch.Tensor]]:
    """`[CLS] a [SEP] (b [SEP])` (`bos`/`eos` for vocabularies without CLS/SEP), cut to
    `max_length` (the longer text first), with segment ids 0 then 1."""
    ids = tokenizer.special_ids
    cls = special_id(ids, ("cls", "bos"), task, "the start of an example")
    sep = special_id(ids, ("sep", "eos"), task, "the end of each text")
    a_ids = tokenizer.encode_batch([e.fields["text_a"] for e in examples])
    pairs = [e.fields.get("text_b") for e in examples]
    b_ids = tokenizer.encode_batch([t or "" for t in pairs])
    rows = []
    for a, b, text_b in zip(a_ids, b_ids, pairs):
        if text_b is None:
            tokens = [cls, *a[: max_length - 2], sep]
            n_a = len(tokens)
        else:
            la, lb = trimmed_lengths(len(a), len(b), max_length - 3)
            tokens = [cls, *a[:la], sep, *b[:lb], sep]
            n_a = la + 2
        t = torch.tensor(tokens, dtype=torch.long)  # (T,)
        seg = torch.zeros_like(t)
        seg[n_a:] = 1
        rows.append({"input_ids": t, "segment_ids": seg})
    return rows


class ClassificationTask(PooledHead):
    """A class for each example, scored by accuracy and macro-F1."""

    Config: ClassVar[type[TaskConfig]] = ClassificationConfig
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")

    def __init__(self, config: ClassificationConfig, variant: str | None) -> None:
        self.config = config
        self.labels: list[str] = list(config.labels or [])

    def load(self, data: TaskData) -> Splits:
        return Splits.read(data, lambda path, labelled: read_examples(path, need_label=labelled))

    def fit(self, train: list[Example]) -> None:
        if not self.labels:
            self.labels = sorted({str(e.label) for e in train})
        self.check("train", train)

    def check(self, name: str, examples: list[Example]) -> None:
        known = set(self.labels)
        for e in examples:
            if e.label is not None and e.label not in known:
                raise DataError(f"{e.source}: label {e.label!r} is not one of the "
                                f"{len(known)} training labels ({', '.join(self.labels[:10])}"
                                f"{', ...' if len(known) > 10 else ''})",
                                hint="fix the label, or list every label in the task's "
                                "`labels` option")

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def target(self) -> dict[str, Any]:
        return {"cls": {"labels": max(2, len(self.labels)), "pooling": self.pooling,
                        "pooler": self.config.pooler}}

    def head_sources(self) -> dict[str, str]:
        return {"targets.cls.pooler.": "targets.sp.pooler."}

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        rows = encode_texts(examples, tokenizer, max_length, "classification")
        if with_labels:
            index = {label: k for k, label in enumerate(self.labels)}
            for row, e in zip(rows, examples):
                if e.label is not None:
                    row["labels"] = torch.tensor(index[e.label])
        return rows

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        probs = torch.softmax(output[:, : len(self.labels)], dim=-1)  # (B, C)
        best = probs.argmax(-1).tolist()
        return [{"id": e.guid, "label": self.labels[k],
                 "probabilities": dict(zip(self.labels, map(float, p)))}
                for e, k, p in zip(examples, best, probs.tolist())]

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tpcli.metrics import accuracy, f1

        index = {label: k for k, label in enumerate(self.labels)}
        pred = [index[p["label"]] for p in predictions]
        gold = [index[e.label] for e in examples]
        return {"accuracy": accuracy(pred, gold),
                "macro_f1": f1(pred, gold, average="macro")}
