"""Task `qa`: extractive question answering (SQuAD v1.1): the answer is a span of the context.

Files: SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}) or JSON lines as Hugging Face's `squad` writes them ({"id",
"question", "context", "answers": {"text": [...], "answer_start": [...]}}). Every answer must be
the context's text at its `answer_start`; one that is not is an error naming the file (and line)
and the question id.

Encoding: `[CLS] question [SEP] context window [SEP]`, segment ids 0 then 1. A context longer than
the room left by the question is cut into windows that start `doc_stride` tokens apart (BERT's
run_squad), each one row; a training row's gold start/end are the answer's tokens when the whole
answer lies in its window, else 0/0 ([CLS]). Character offsets of the word pieces come from the
tokenizer's Hugging Face `tokenizers` object (`backend`, or the `_tok` every tp tokenizer built on
`tokenizers` holds), so an answer is always an exact slice of the context.

Windows vs examples: `tpcli.downstream.finetune.predict` hands `decode` each batch's outputs with
`examples[start:start + rows]`, as if one row were one example. `encode` therefore records, per
example object, its rows (window offsets and where the context starts in the row); `decode` finds
the set and the row cursor from the first example of the slice (its index is the batch's first
row), keeps the best span of each example over its windows, and returns one prediction per example
once its last window has been seen, so the predictions come out one per example, in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_text.batch_keys import task_keys
from tpcli.data.dataset import special_id
from tpcli.errors import DataError, TpError
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData, data_file


class QaConfig(TaskConfig):
    doc_stride: int = Field(128, ge=1, description="tokens between the starts of two windows "
                            "of a long context")
    max_query_length: int = Field(64, ge=1, description="question tokens kept (the rest cut)")
    max_answer_length: int = Field(30, ge=1, description="longest answer predicted, in tokens")
    n_best: int = Field(20, ge=1, description="best starts and ends per window searched for "
                        "the best valid span")


@dataclass
class Window:
    """One row: its example, the row position of its first context token, the character span of
    each of its context tokens, and whether it is the example's last window."""

    example: int
    first: int
    offsets: list[tuple[int, int]]
    last: bool


# ----------------------------------------------------------------------------- reading


def _answers(raw: Any, where: str) -> tuple[list[str], list[int]]:
    """(texts, starts) of a SQuAD list of {"text", "answer_start"} or a HF {"text": [...],
    "answer_start": [...]}."""
    try:
        if isinstance(raw, dict):
            texts, starts = list(raw["text"]), list(raw["answer_start"])
        else:
            texts = [a["text"] for a in raw]
            starts = [a["answer_start"] for a in raw]
        if len(texts) != len(starts):
            raise ValueError("as many texts as answer_start values")
        return [str(t) for t in texts], [int(s) for s in starts]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: answers are not in SQuAD form ({e})",
                        hint='give "answers": [{"text": ..., "answer_start": N}] (SQuAD) or '
                        '{"text": [...], "answer_start": [...]} (JSON lines)') from None


def make_example(row: dict[str, Any], source: str, need_answers: bool) -> Example:
    """One question; its answers checked against the context."""
    missing = [k for k in ("id", "question", "context") if not isinstance(row.get(k), str)
               and not (k == "id" and isinstance(row.get(k), int))]
    if missing:
        raise DataError(f"{source}: no {', '.join(missing)} (a string) in question "
                        f"{row.get('id', '?')!r}",
                        hint="every question needs an id, a question and its context")
    qid, context = str(row["id"]), row["context"]
    where = f"{source}: question {qid!r}"
    raw = row.get("answers")
    texts, starts = _answers(raw, where) if raw is not None else ([], [])
    if need_answers and not texts:
        raise DataError(f"{where}: no answer", hint="give every training and dev question at "
                        "least one answer with its answer_start")
    for text, start in zip(texts, starts):
        found = context[start:start + len(text)] if start >= 0 else ""
        if found != text or not text:
            raise DataError(f"{where}: answer {text!r} is not in its context at answer_start "
                            f"{start} (the context has {found!r} there)",
                            hint="answer_start is the character offset of the answer in the "
                            "context, counting from 0; fix the offset or the answer text")
    return Example(qid, {"question": row["question"], "context": context,
                         "answer_starts": starts}, texts or None, source)


def _squad_rows(path: str, data: Any) -> list[tuple[str, dict[str, Any]]]:
    """(source, question record with its paragraph's context) of SQuAD's "data" list."""
    try:
        return [(path, {**qa, "context": par.get("context")})
                for article in data for par in article.get("paragraphs", [])
                for qa in par.get("qas", [])]
    except (AttributeError, TypeError) as e:
        raise DataError(f"{path}: not in SQuAD form ({e})",
                        hint='{"data": [{"paragraphs": [{"context": ..., "qas": [{"id", '
                        '"question", "answers"}]}]}]}') from None


def _rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    """(source, question record) of a SQuAD JSON file or a JSON-lines file."""
    p = data_file(path, "SQuAD JSON file or a JSON-lines file of questions")
    text = p.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not JSON
    if p.suffix != ".jsonl":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines under another name
        if isinstance(whole, dict) and "data" in whole:
            return _squad_rows(path, whole["data"])
        if whole is not None and len([x for x in text.splitlines() if x.strip()]) > 1:
            raise DataError(f"{path}: JSON without a \"data\" list of articles",
                            hint="give SQuAD JSON ({\"data\": [{\"paragraphs\": [...]}]}) or "
                            "JSON lines, one question per line")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})",
                                hint="one JSON object per line, or a SQuAD JSON file") from None
    return out


def read_examples(path: str, need_answers: bool) -> list[Example]:
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for source, row in _rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{source}: not a JSON object", hint="one question per object")
        e = make_example(row, source, need_answers)
        if e.guid in seen:
            raise DataError(f"{source}: question id {e.guid!r} repeats ({seen[e.guid]})",
                            hint="give every question its own id (scores are keyed by id)")
        seen[e.guid] = source
        examples.append(e)
    return examples


# ----------------------------------------------------------------------------- windows


def windows(n_tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over `n_tokens` context tokens: at most `room` tokens
    each, starts `stride` apart (never leaving a gap), the last one reaching the end."""
    out, start = [], 0
    while True:
        length = min(room, n_tokens - start)
        out.append((start, length))
        if start + length >= n_tokens:
            return out
        start += min(length, stride)


def answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token overlapping characters [start, end); None when no token does."""
    inside = [k for k, (a, b) in enumerate(offsets) if a < end and b > start]
    return (inside[0], inside[-1]) if inside else None


def backend_of(tokenizer: Any) -> Any:
    """The tokenizer's Hugging Face `tokenizers.Tokenizer` (it gives character offsets)."""
    from tokenizers import Tokenizer

    for name in ("backend", "_tok"):
        tok = getattr(tokenizer, name, None)
        if isinstance(tok, Tokenizer):
            return tok
    raise TpError(f"task qa needs character offsets of the word pieces, which tokenizer "
                  f"{type(tokenizer).__name__} does not give",
                  hint="use a tokenizer built on Hugging Face `tokenizers` (wordpiece, bpe, "
                  "unigram or hf)")


def best_span(logits: torch.Tensor, first: int, count: int, n_best: int, max_answer: int
              ) -> tuple[float, int, int] | None:
    """(score, i, j) of the best span of one row's (T, 2) logits over its context tokens (rows
    `first..first+count-1`; i, j count from the first of them): j >= i, at most `max_answer`
    tokens, among the `n_best` best starts and ends; None when no pair is valid."""
    if count <= 0:
        return None
    ctx = logits[first:first + count].float()  # (C, 2)
    k = min(n_best, count)
    starts = ctx[:, 0].topk(k).indices.tolist()
    ends = ctx[:, 1].topk(k).indices.tolist()
    best: tuple[float, int, int] | None = None
    for i in starts:
        for j in ends:
            if j < i or j - i + 1 > max_answer:
                continue
            score = float(ctx[i, 0] + ctx[j, 1])
            if best is None or score > best[0]:
                best = (score, i, j)
    return best


# ----------------------------------------------------------------------------- the task


class QaTask:
    """Answer spans of questions about a context, scored by SQuAD v1.1 F1 and exact match."""

    batch_keys = staticmethod(task_keys)  # text rows: keys by tp-text's naming convention

    Config: ClassVar[type[TaskConfig]] = QaConfig
    metrics: tuple[str, ...] = ("f1", "exact_match")

    def __init__(self, config: QaConfig, variant: str | None) -> None:
        self.config = config
        self._plans: dict[int, tuple[list[Example], list[Window], int]] = {}
        self._cursor: tuple[list[Example], list[Window], int] | None = None
        self._best: dict[int, tuple[Any, str]] = {}

    def load(self, data: TaskData) -> Splits:
        return Splits.read(data, lambda path, labelled: read_examples(path, need_answers=labelled))

    def fit(self, train: list[Example]) -> None:
        """Nothing to learn from the data: the head is the same for every set."""

    def check(self, name: str, examples: list[Example]) -> None:
        """Answers were checked against their contexts when read."""

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def target(self) -> dict[str, Any]:
        return {"span": {}}

    def head_sources(self) -> dict[str, str]:
        return {}

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        cls = special_id(tokenizer.special_ids, ("cls", "bos"), "qa", "the start of a row")
        sep = special_id(tokenizer.special_ids, ("sep", "eos"), "qa", "the end of each text")
        questions = tokenizer.encode_batch([e.fields["question"] for e in examples])
        contexts = backend_of(tokenizer).encode_batch(
            [e.fields["context"] for e in examples], add_special_tokens=False)
        rows: list[dict[str, torch.Tensor]] = []
        plan: list[Window] = []
        for index, (e, q, c) in enumerate(zip(examples, questions, contexts)):
            q = q[: self.config.max_query_length]
            room = max_length - len(q) - 3
            if room < 1:
                raise TpError(f"finetune.max_length={max_length} leaves no room for the "
                              f"context after a {len(q)}-token question",
                              hint="raise finetune.max_length or lower the task's "
                              "max_query_length")
            gold = self._gold(e, c.offsets) if with_labels and e.label is not None else None
            spans = windows(len(c.ids), room, self.config.doc_stride)
            for k, (start, length) in enumerate(spans):
                first = len(q) + 2
                ids = [cls, *q, sep, *c.ids[start:start + length], sep]
                row = {"input_ids": torch.tensor(ids, dtype=torch.long),  # (T,)
                       "segment_ids": torch.tensor([0] * first + [1] * (length + 1))}
                if gold is not None:
                    inside = start <= gold[0] and gold[1] < start + length
                    s, t = (first + gold[0] - start, first + gold[1] - start) if inside else (0, 0)
                    row["start_positions"], row["end_positions"] = torch.tensor(s), torch.tensor(t)
                rows.append(row)
                plan.append(Window(index, first, list(c.offsets[start:start + length]),
                                   k == len(spans) - 1))
        for index, e in enumerate(examples):
            self._plans[id(e)] = (examples, plan, index)
        return rows

    @staticmethod
    def _gold(e: Example, offsets: list[tuple[int, int]]) -> tuple[int, int]:
        """Token span of the example's first answer."""
        start = e.fields["answer_starts"][0]
        span = answer_tokens(offsets, start, start + len(e.label[0]))
        if span is None:
            raise DataError(f"{e.source}: question {e.guid!r}: answer {e.label[0]!r} has no "
                            "token of its own (only spaces or dropped characters)",
                            hint="make the answer a span of words of the context")
        return span

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        """Rows' (B, T, 2) logits -> the predictions of the examples whose last window is among
        them (see the module docstring for why `examples` only locates the rows)."""
        if examples:
            if id(examples[0]) not in self._plans:
                raise TpError("task qa: decode got examples this task did not encode",
                              hint="encode the examples with the same task object first")
            exs, plan, row = self._plans[id(examples[0])]
            if row == 0:
                self._best = {}
            self._cursor = (exs, plan, row)
        if self._cursor is None:
            raise TpError("task qa: decode called before any encoded rows")
        exs, plan, row = self._cursor
        out = []
        for r in range(output.shape[0]):
            w = plan[row + r]
            context = exs[w.example].fields["context"]
            found = best_span(output[r], w.first, len(w.offsets), self.config.n_best,
                              self.config.max_answer_length)
            if found is not None and (w.example not in self._best
                                      or found[0] > self._best[w.example][0]):
                score, i, j = found
                self._best[w.example] = (score, context[w.offsets[i][0]:w.offsets[j][1]])
            if w.last:
                score, text = self._best.pop(w.example, (None, ""))  # no valid span: ""
                out.append({"id": exs[w.example].guid, "answer": text, "score": score})
        self._cursor = (exs, plan, row + output.shape[0])
        return out

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        """SQuAD v1.1 F1 and exact match, as fractions (0-1) like every task's metrics."""
        from tpcli.metrics.text import squad_scores

        scores = squad_scores({p["id"]: p["answer"] for p in predictions},
                              {e.guid: list(e.label or []) for e in examples})
        return {"f1": scores["f1"] / 100.0, "exact_match": scores["exact_match"] / 100.0}
