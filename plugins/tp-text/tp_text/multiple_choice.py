"""Task `choice`: multiple choice (SWAG, RACE, ARC, COPA): pick the right one of K choices.

Files: JSON lines {"id", "question", "choices": [...], "label"}, with an optional "context" (a
passage the question is about); `label` is the right choice's index or its text. Every example of
the task has the same number of choices K (the training file sets it); another count is an error
naming the file and line.

Encoding: each choice becomes one segment `[CLS] a [SEP] b [SEP]` (a = the question, b = the
choice; with a context, a = the context and b = question + choice), the longer text losing its end
first, segment ids 0 then 1 and positions restarting at 0 in each segment (`position_ids`). The K
segments of an example are laid end to end in ONE row, with `choice_starts` (K,) marking where each
begins: the fine-tuning loop shuffles rows one by one and the standard collate pads (T,) and (K,)
fields, so one row per example keeps an example's choices together. `block_ids` (T,) gives each
token its choice's index, and the transformer attends within a block only: each choice is read
on its own, as K separate rows would be.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_text.batch_keys import task_keys
from tpcli.data.dataset import special_id
from tpcli.errors import DataError
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData, data_file
from tp_text.bert_processor import trimmed_lengths
from tp_text.records import jsonl_records


class ChoiceConfig(TaskConfig):
    choices: int | None = Field(
        None, ge=2, description="choices per example (default: the training file's count)")
    pooler: bool = Field(True, description="BERT's pooler (dense + tanh) before the scorer")
    position_offset: int = Field(
        0, ge=0, description="row of the position table where each choice's positions start "
        "(the model's pos embedding offset: 2 for a Hugging Face RoBERTa)")


def _example(path: str, n: int, row: Any, need_label: bool) -> Example:
    where = f"{path}:{n}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: not a JSON object", hint="one example per line")
    question, choices = row.get("question"), row.get("choices")
    if not isinstance(question, str):
        raise DataError(f"{where}: no question (a string)", hint='give "question": "..."')
    if not isinstance(choices, list) or len(choices) < 2 or \
            not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: choices must be a list of at least two strings",
                        hint='give "choices": ["...", "..."]')
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise DataError(f"{where}: context must be a string", hint="or leave it out")
    label = row.get("label")
    if label is None and need_label:
        raise DataError(f"{where}: no label", hint="give the right choice's index or text")
    index = None
    if isinstance(label, bool) or (label is not None and not isinstance(label, (int, str))):
        raise DataError(f"{where}: label {label!r} is neither an index nor a choice's text",
                        hint="give the right choice's index (from 0) or its text")
    if isinstance(label, int):
        if not 0 <= label < len(choices):
            raise DataError(f"{where}: label {label} is not an index of its {len(choices)} "
                            "choices", hint="indexes count from 0")
        index = label
    elif isinstance(label, str) and label not in choices and label.isdigit():
        return _example(path, n, {**row, "label": int(label)}, need_label)  # "2": an index
    elif isinstance(label, str):
        if label not in choices:
            raise DataError(f"{where}: label {label!r} is not one of its choices",
                            hint="give the right choice's exact text or its index")
        index = choices.index(label)
    return Example(str(row.get("id", n)), {"question": question, "context": context,
                                          "choices": list(choices)}, index, where)


def read_examples(path: str, need_label: bool) -> list[Example]:
    """JSON lines -> Examples; every example with the file's first choice count."""
    data_file(path, 'JSON-lines file of {"question", "choices", "label"}')
    out: list[Example] = []
    for n, row in jsonl_records(path):
        e = _example(path, n, row, need_label)
        if out and len(e.fields["choices"]) != len(out[0].fields["choices"]):
            raise DataError(f"{path}:{n}: {len(e.fields['choices'])} choices, but "
                            f"{out[0].source} has {len(out[0].fields['choices'])}",
                            hint="every example needs the same number of choices")
        out.append(e)
    return out


class ChoiceTask:
    """One right choice of K per example, scored by accuracy."""

    batch_keys = staticmethod(task_keys)  # text rows: keys by tp-text's naming convention

    Config: ClassVar[type[TaskConfig]] = ChoiceConfig
    metrics: tuple[str, ...] = ("accuracy",)

    def __init__(self, config: ChoiceConfig, variant: str | None) -> None:
        self.config = config
        self.choices: int | None = config.choices

    def load(self, data: TaskData) -> Splits:
        return Splits.read(data, lambda path, labelled: read_examples(path, need_label=labelled))

    def fit(self, train: list[Example]) -> None:
        if train and self.choices is None:
            self.choices = len(train[0].fields["choices"])
        self.check("train", train)

    def check(self, name: str, examples: list[Example]) -> None:
        for e in examples[:1]:  # a file holds one choice count (checked when read)
            k = len(e.fields["choices"])
            if self.choices is not None and k != self.choices:
                raise DataError(f"{e.source}: {k} choices, but the training examples have "
                                f"{self.choices}", hint="every example of the task needs the "
                                "same number of choices")

    def state(self) -> dict[str, Any]:
        return {"choices": self.choices}

    def restore(self, state: dict[str, Any]) -> None:
        self.choices = state.get("choices", self.choices)

    def target(self) -> dict[str, Any]:
        return {"choice": {"pooler": self.config.pooler}}

    def head_sources(self) -> dict[str, str]:
        return {"targets.choice.pooler.": "targets.sp.pooler."}

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        ids = tokenizer.special_ids
        cls = special_id(ids, ("cls", "bos"), "choice", "the start of each choice")
        sep = special_id(ids, ("sep", "eos"), "choice", "the end of each text")
        firsts, seconds = [], []
        for e in examples:
            q, ctx = e.fields["question"], e.fields.get("context")
            for c in e.fields["choices"]:
                firsts.append(ctx if ctx is not None else q)
                seconds.append(f"{q} {c}" if ctx is not None else c)
        a_ids, b_ids = tokenizer.encode_batch(firsts), tokenizer.encode_batch(seconds)
        rows, k0, off = [], 0, self.config.position_offset
        for e in examples:
            k = len(e.fields["choices"])
            tokens: list[int] = []
            segments: list[int] = []
            positions: list[int] = []
            starts: list[int] = []
            blocks: list[int] = []
            for a, b in zip(a_ids[k0:k0 + k], b_ids[k0:k0 + k]):
                la, lb = trimmed_lengths(len(a), len(b), max_length - 3)
                seg = [cls, *a[:la], sep, *b[:lb], sep]
                starts.append(len(tokens))
                tokens += seg
                segments += [0] * (la + 2) + [1] * (lb + 1)
                positions += range(off, off + len(seg))
                blocks += [len(starts) - 1] * len(seg)
            k0 += k
            row = {"input_ids": torch.tensor(tokens, dtype=torch.long),  # (K * L,)
                   "segment_ids": torch.tensor(segments, dtype=torch.long),
                   "position_ids": torch.tensor(positions, dtype=torch.long),
                   "choice_starts": torch.tensor(starts, dtype=torch.long),  # (K,)
                   "block_ids": torch.tensor(blocks, dtype=torch.long)}  # each choice apart
            if with_labels and e.label is not None:
                row["labels"] = torch.tensor(int(e.label))
            rows.append(row)
        return rows

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        probs = torch.softmax(output.float(), dim=-1)  # (B, K)
        best = probs.argmax(-1).tolist()
        return [{"id": e.guid, "label": k, "choice": e.fields["choices"][k],
                 "probabilities": [float(x) for x in p]}
                for e, k, p in zip(examples, best, probs.tolist())]

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tpcli.metrics import accuracy

        return {"accuracy": accuracy([p["label"] for p in predictions],
                                     [int(e.label) for e in examples])}
