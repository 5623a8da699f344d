"""Classification data: `label<TAB>text` or `label<TAB>text_a<TAB>text_b`, one example a line.

`tp preprocess` reads the corpus in the `tsv` format: each line is one document whose sequences
are its tab-separated fields, the label first. An example is ``[CLS] a [SEP]`` or
``[CLS] a [SEP] b [SEP]`` (segment ids 0 then 1), cut to `seq_length` (the longer text loses its
end first, as BERT's truncate_seq_pair), with `labels` () the class index.

Class indexes: with the `labels` option, a label's index is its position in that list (a label
in the data that is not in the list is an error naming it). Without it, the distinct labels of
the dataset are sorted by their decoded text (numerically when every label is an integer, so
labels 0..K-1 keep their value) and numbered 0..K-1; `label_names` on the dataset lists them.
Labels are compared as token sequences, so they follow the tokenizer's normalization (an
uncased vocabulary makes `Pos` and `pos` one label).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator

from tp_text.bert_processor import trimmed_lengths
from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import TokenStore, special_id
from tpcli.data.format import Reader
from tpcli.errors import DataError
from tpcli.model.module import ModuleConfig


class ClsProcessorConfig(ModuleConfig):
    """Options of the `cls` processor (labelled texts or text pairs)."""

    seq_length: int = Field(128, ge=4, le=65536, description="tokens per example, with specials")
    labels: list[str] | None = Field(
        None, min_length=1,
        description="class names in index order (default: the dataset's sorted distinct labels)",
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return labels


def _rows(seqs: list[list[int]] | list[np.ndarray], width: int) -> np.ndarray:
    """Token sequences -> (N, width) int64 padded with -1 (comparable as rows)."""
    out = np.full((len(seqs), width), -1, np.int64)
    for r, s in enumerate(seqs):
        out[r, :len(s)] = s
    return out


def _sort_key(name: str) -> tuple[int, float, str]:
    return (0, float(int(name)), "") if name.lstrip("-").isdigit() else (1, 0.0, name)


class ClsDataset(TextDataset):
    """One example per line: input_ids, segment_ids (T,) and labels ()."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: ClsProcessorConfig):
        super().__init__(store, tokenizer, seed)
        self.config = config
        self.cls = special_id(self.special_ids, ("cls", "bos"), "cls", "the start of an example")
        self.sep = special_id(self.special_ids, ("sep", "eos"), "cls", "the end of each text")
        self.bounds = store.document_bounds()  # (D+1,) first sequence (the label) of each line
        lengths = store.sequence_lengths()  # (S,)
        first = self.bounds[:-1]
        label_len = lengths[first]  # (D,)
        seq_cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        width = int(label_len.max()) if len(label_len) else 1
        pos = seq_cum[first][:, None] + np.arange(width)  # (D, W)
        inside = np.arange(width)[None, :] < label_len[:, None]
        rows = np.where(inside, TokenStore(store).gather(np.where(inside, pos, 0)), -1)  # (D, W)
        distinct, inverse = np.unique(rows, axis=0, return_inverse=True)  # (K, W), (D,)
        found = [tokenizer.decode([int(t) for t in r if t >= 0]).strip() for r in distinct]
        self.label_names, index = self._numbering(tokenizer, distinct, found)
        self.labels = index[np.asarray(inverse).reshape(-1)]  # (D,)

    def _numbering(self, tokenizer: Any, distinct: np.ndarray, found: list[str]
                   ) -> tuple[list[str], np.ndarray]:
        """(class names, class index of each distinct label row (K,))."""
        if self.config.labels is None:
            order = sorted(range(len(found)), key=lambda k: _sort_key(found[k]))
            index = np.empty(len(found), np.int64)
            index[order] = np.arange(len(found))
            return [found[k] for k in order], index
        names = self.config.labels
        encoded = tokenizer.encode_batch(list(names))
        width = max(distinct.shape[1], max(len(e) for e in encoded))
        given = {tuple(r): k for k, r in enumerate(_rows(encoded, width))}
        index = np.empty(len(found), np.int64)
        for k, row in enumerate(_rows(list(distinct), width)):
            if tuple(row) not in given:
                raise DataError(
                    f"the cls processor found label {found[k]!r} in dataset {self.store.folder}, "
                    f"which is not one of the labels option {names}",
                    hint="add it to processor.labels, or fix the corpus line",
                )
            index[k] = given[tuple(row)]
        return list(names), index

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        first, end = int(self.bounds[index]), int(self.bounds[index + 1])
        a = self.store.sequence(first + 1) if end - first > 1 else np.zeros(0, np.int64)
        b = self.store.sequence(first + 2) if end - first > 2 else None
        t = self.config.seq_length
        if b is None:
            a = a[: t - 2]
            ids = np.concatenate([[self.cls], a, [self.sep]])
        else:
            la, lb = trimmed_lengths(len(a), len(b), t - 3)
            a, b = a[:la], b[:lb]
            ids = np.concatenate([[self.cls], a, [self.sep], b, [self.sep]])
        ids_t = torch.from_numpy(ids.astype(np.int64))  # (T,)
        segments = torch.zeros_like(ids_t)
        segments[len(a) + 2:] = 1
        return {"input_ids": ids_t, "segment_ids": segments,
                "labels": torch.tensor(int(self.labels[index]))}


class ClsProcessor:
    """Labelled texts or pairs from `label<TAB>text[<TAB>text_b]` lines."""

    Config = ClsProcessorConfig
    corpus_format: ClassVar[str] = "tsv"

    def __init__(self, config: ClsProcessorConfig | None = None) -> None:
        self.config = config or ClsProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> ClsDataset:
        return ClsDataset(store, tokenizer, seed, self.config)
