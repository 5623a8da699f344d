"""Task `tagging`: sequence labelling (NER, chunking) with BIO / IOBES tags, scored per entity.

Files, chosen by suffix:
- CoNLL (any other suffix): one `token tag` per line (space or tab; extra middle columns are
  allowed: the token is the first column, the tag the last), a blank line between sentences,
  `-DOCSTART-` lines skipped;
- JSON lines (`.jsonl`, `.json`): {"tokens": [...], "tags": [...]} per line (optional "id");
- TencentPretrain's NER TSV (`.tsv`): a header with `text_a` and `label`, tokens and tags
  separated by spaces in those two cells.
A test file may leave the tags out (CoNLL: token-only lines). Tags are `O` or `B-`/`I-`/`E-`/`S-`
and a type; the tag list is `O` then the other training tags sorted (or the task's `labels`
option); a dev or test tag outside it is an error naming its file and line.

Encoding: each word becomes its word pieces (the tokenizer on the word alone, after a space
when it is not the first, so byte-level BPE sees it as in running text); the first piece
carries the word's tag, the others -100; `[CLS] pieces [SEP]`, segment ids 0, cut to
`max_length`. Words cut off by `max_length` are not seen by the model: `decode` predicts `O`
for them (they still count in the scores, as a missed entity does). The head is the `tagger`
target (optionally with a CRF); scores: entity precision / recall / F1 (seqeval's counting,
`tpcli.metrics.entity_scores`) and token accuracy; F1 selects the best checkpoint.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_text.batch_keys import task_keys
from tpcli.data.dataset import special_id
from tpcli.errors import DataError
from tpcli.downstream.tasks import Example, Splits, TaskConfig, TaskData, data_file
from tp_text.records import jsonl_records, tsv_records
from tp_text.tagger import IGNORE, LABELS_KEY, STARTS_KEY

TAG = re.compile(r"O|[BIES]-\S+")
TAG_HINT = ("tags are `O` or a prefix B-, I-, E- or S- and an entity type (B-PER, I-PER, "
            "S-LOC); in a CoNLL file the tag is the last column of each line")
FORMAT_HINT = ("CoNLL: one `token tag` per line, a blank line between sentences; JSONL: "
               '{"tokens": [...], "tags": [...]} per line; TSV: a `text_a<TAB>label` header, '
               "tokens and tags separated by spaces")


class TaggingConfig(TaskConfig):
    labels: list[str] | None = Field(
        None, description="the tag list, in order (default: `O`, then the other tags of the "
        "train file sorted)")
    crf: bool = Field(False, description="a linear-chain CRF on top of the per-token scores "
                      "(the tagger target's `crf`)")


# ----------------------------------------------------------------------------- reading


def _check_tag(tag: str, where: str) -> None:
    if not TAG.fullmatch(tag):
        raise DataError(f"{where}: tag {tag!r} is not a BIO/IOBES tag", hint=TAG_HINT)


def _sentence(path: str, lines: list[int], tokens: list[str], tags: list[str | None]
              ) -> Example:
    """One Example; its tags all given (checked) or all absent (a test file)."""
    given = [t is not None for t in tags]
    if any(given) and not all(given):
        n = lines[given.index(False)]
        raise DataError(f"{path}:{n}: token {tokens[given.index(False)]!r} has no tag while "
                        "other tokens of its sentence have one", hint=FORMAT_HINT)
    for tag, n in zip(tags, lines):
        if tag is not None:
            _check_tag(tag, f"{path}:{n}")
    label = list(tags) if tags and all(given) else None
    return Example(str(lines[0]), {"tokens": tokens, "lines": lines}, label,
                   f"{path}:{lines[0]}")


def read_conll(path: str, need_tags: bool) -> list[Example]:
    out: list[Example] = []
    lines: list[int] = []
    tokens: list[str] = []
    tags: list[str | None] = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not a token
        for n, raw in enumerate(f, 1):
            cells = raw.split()
            if not cells or cells[0] == "-DOCSTART-":
                if tokens:
                    out.append(_sentence(path, lines, tokens, tags))
                lines, tokens, tags = [], [], []
                continue
            if len(cells) == 1 and need_tags:
                raise DataError(f"{path}:{n}: token {cells[0]!r} has no tag", hint=FORMAT_HINT)
            lines.append(n)
            tokens.append(cells[0])
            tags.append(cells[-1] if len(cells) > 1 else None)
    if tokens:
        out.append(_sentence(path, lines, tokens, tags))
    return out


def _pair(path: str, n: int, tokens: list[str], tags: list[str] | None, need_tags: bool,
          guid: str) -> Example:
    """A JSONL / TSV sentence: every token on line `n`."""
    where = f"{path}:{n}"
    if tags is None:
        if need_tags:
            raise DataError(f"{where}: no tags", hint=FORMAT_HINT)
        return Example(guid, {"tokens": tokens, "lines": [n] * len(tokens)}, None, where)
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags",
                        hint="give exactly one tag per token")
    for tag in tags:
        _check_tag(tag, where)
    return Example(guid, {"tokens": tokens, "lines": [n] * len(tokens)}, list(tags), where)


def _strings(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: `{key}` is not a list of strings", hint=FORMAT_HINT)
    return value


def read_jsonl(path: str, need_tags: bool) -> list[Example]:
    out = []
    for n, row in jsonl_records(path):
        if not isinstance(row, dict) or "tokens" not in row:
            raise DataError(f"{path}:{n}: no `tokens`", hint=FORMAT_HINT)
        tokens = _strings(row["tokens"], f"{path}:{n}", "tokens")
        tags = None if row.get("tags") is None else _strings(row["tags"], f"{path}:{n}", "tags")
        out.append(_pair(path, n, tokens, tags, need_tags, str(row.get("id", n))))
    return out


def read_tsv(path: str, need_tags: bool) -> list[Example]:
    out = []
    for n, row in tsv_records(path):
        if "text_a" not in row:
            raise DataError(f"{path}:1: the header has no `text_a` column "
                            f"(have {', '.join(row) or 'nothing'})", hint=FORMAT_HINT)
        tags = row["label"].split() if "label" in row else None
        out.append(_pair(path, n, row["text_a"].split(), tags, need_tags,
                         row.get("id", str(n))))
    return out


def read_examples(path: str, need_tags: bool) -> list[Example]:
    """A CoNLL, JSONL or TSV file (by suffix) -> Examples with `fields` tokens and lines (the
    file line of each token) and `label` the tag list (None when a test file has no tags)."""
    p = data_file(path, "CoNLL, JSONL or TSV file (" + FORMAT_HINT + ")")
    if p.suffix in (".jsonl", ".json"):
        return read_jsonl(path, need_tags)
    if p.suffix == ".tsv":
        return read_tsv(path, need_tags)
    return read_conll(path, need_tags)


# ----------------------------------------------------------------------------- the task


class TaggingTask:
    """A BIO / IOBES tag for every word, scored by entity-level F1."""

    batch_keys = staticmethod(task_keys)  # text rows: keys by tp-text's naming convention

    Config: ClassVar[type[TaskConfig]] = TaggingConfig
    metrics: tuple[str, ...] = ("f1", "precision", "recall", "accuracy")

    def __init__(self, config: TaggingConfig, variant: str | None) -> None:
        self.config = config
        self.labels: list[str] = list(config.labels or [])
        for tag in self.labels:
            _check_tag(tag, "finetune.task.labels")

    def load(self, data: TaskData) -> Splits:
        return Splits.read(data, lambda path, labelled: read_examples(path, need_tags=labelled))

    def fit(self, train: list[Example]) -> None:
        if not self.labels:
            tags = {t for e in train for t in (e.label or [])}
            self.labels = ["O"] + sorted(tags - {"O"})
        self.check("train", train)

    def check(self, name: str, examples: list[Example]) -> None:
        known = set(self.labels)
        for e in examples:
            for tag, n in zip(e.label or [], e.fields["lines"]):
                if tag not in known:
                    path = e.source.rpartition(":")[0]
                    shown = ", ".join(self.labels[:10]) + (", ..." if len(known) > 10 else "")
                    raise DataError(f"{path}:{n}: tag {tag!r} is not one of the {len(known)} "
                                    f"training tags ({shown})",
                                    hint="fix the tag, or list every tag in the task's "
                                    "`labels` option")

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def restore(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    def target(self) -> dict[str, Any]:
        return {"tagger": {"labels": max(2, len(self.labels)), "crf": self.config.crf}}

    def head_sources(self) -> dict[str, str]:
        return {}  # no pre-training target has a per-token tag layer to start from

    def encode(self, examples: list[Example], tokenizer: Any, max_length: int,
               with_labels: bool = True) -> list[dict[str, torch.Tensor]]:
        """Rows of input_ids, segment_ids, word_starts (True on each word's first piece) and,
        with labels, tagger_labels (the word's tag index there, -100 elsewhere)."""
        ids = tokenizer.special_ids
        cls = special_id(ids, ("cls", "bos"), "tagging", "the start of an example")
        sep = special_id(ids, ("sep", "eos"), "tagging", "the end of an example")
        words = [w if i == 0 else " " + w for e in examples
                 for i, w in enumerate(e.fields["tokens"])]
        pieces = iter(tokenizer.encode_batch(words))
        index = {tag: k for k, tag in enumerate(self.labels)}
        rows = []
        for e in examples:
            tokens, starts, tags = [cls], [False], [IGNORE]
            for k, word in enumerate(e.fields["tokens"]):
                got = next(pieces) or self._unknown(ids, e, k)
                room = max_length - 1 - len(tokens)  # keep one place for [SEP]
                if room <= 0:
                    continue  # consume the pieces of the words that do not fit
                got = got[:room]
                tokens += got
                starts += [True] + [False] * (len(got) - 1)
                tag = index[e.label[k]] if e.label is not None else IGNORE
                tags += [tag] + [IGNORE] * (len(got) - 1)
            t = torch.tensor(tokens + [sep], dtype=torch.long)  # (T,)
            row = {"input_ids": t, "segment_ids": torch.zeros_like(t),
                   STARTS_KEY: torch.tensor(starts + [False])}
            if with_labels and e.label is not None:
                row[LABELS_KEY] = torch.tensor(tags + [IGNORE], dtype=torch.long)
            rows.append(row)
        return rows

    @staticmethod
    def _unknown(ids: dict[str, int], e: Example, k: int) -> list[int]:
        """A word the tokenizer makes nothing of is one unknown piece, so it keeps its tag."""
        if "unk" not in ids:
            path = e.source.rpartition(":")[0]
            raise DataError(f"{path}:{e.fields['lines'][k]}: token {e.fields['tokens'][k]!r} "
                            "gives no word pieces and the vocabulary has no unknown token",
                            hint="drop or replace the token")
        return [int(ids["unk"])]

    def decode(self, output: torch.Tensor, examples: list[Example]) -> list[dict[str, Any]]:
        """The tagger's (B, T) output -> one tag per word: the predicted tags in order, then `O`
        for the words cut off by max_length."""
        out = []
        for e, row in zip(examples, output.long().tolist()):
            got = [self.labels[k] if k < len(self.labels) else "O" for k in row if k != IGNORE]
            n = len(e.fields["tokens"])
            out.append({"id": e.guid, "tokens": e.fields["tokens"],
                        "tags": (got + ["O"] * n)[:n]})
        return out

    def evaluate(self, predictions: list[dict[str, Any]], examples: list[Example]
                 ) -> dict[str, float]:
        from tpcli.metrics.sequence import entity_scores

        pred = [p["tags"] for p in predictions]
        gold = [list(e.label or []) for e in examples]
        scores = entity_scores(pred, gold)
        total = sum(len(g) for g in gold)
        right = sum(a == b for p, g in zip(pred, gold) for a, b in zip(p, g))
        return {"f1": scores["f1"], "precision": scores["precision"],
                "recall": scores["recall"], "accuracy": right / total if total else 0.0}
