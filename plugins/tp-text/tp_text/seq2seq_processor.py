"""Sequence-to-sequence data (CoVe's machine translation): `source<TAB>target`, one pair a line.

`tp preprocess` reads the corpus in the `tsv` format: each line is one document whose two
sequences are its tab-separated fields (the source first). With `end` the tokenizer's `eos`
(else its `sep`) and `start` the decoder start token (option `decoder_start`):

    input_ids     = source end          (source cut to seq_length - 1 tokens)
    tgt_input_ids = start target        (target cut to tgt_seq_length - 1 tokens)
    lm_labels     = target end          (the token the decoder predicts at each position)

so `tgt_input_ids` is `lm_labels` shifted right by one and both have the same length. A cut
target still ends with `end`, as Hugging Face tokenizers keep `</s>` when they truncate.

The decoder start token is the tokenizer's `bos` by default, else its `cls` (BERT vocabularies
have no `bos`); `decoder_start` names one explicitly (`pad` is T5's and mT5's, `eos` BART's).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import special_id
from tpcli.data.format import Reader
from tpcli.errors import DataError
from tpcli.model.module import ModuleConfig

START_FALLBACK = ("bos", "cls")  # the default decoder start: the first the vocabulary has
END_TOKENS = ("eos", "sep")  # the end of the source and of the target: the first it has


class Seq2SeqProcessorConfig(ModuleConfig):
    """Options of the `seq2seq` processor (source/target pairs)."""

    seq_length: int = Field(128, ge=2, le=1 << 20,
                            description="tokens of each source (input_ids), with its end token")
    tgt_seq_length: int = Field(
        128, ge=2, le=1 << 20,
        description="tokens of each decoder input (tgt_input_ids, with the start token; "
        "lm_labels has the same length)")
    decoder_start: Literal["bos", "pad", "eos", "cls"] | None = Field(
        None, description="the special token that starts every decoder input (default: bos, "
        "else cls)")


class Seq2SeqDataset(TextDataset):
    """One example per pair: input_ids (T,), tgt_input_ids (T',), lm_labels (T',)."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int,
                 config: Seq2SeqProcessorConfig) -> None:
        super().__init__(store, tokenizer, seed)
        self.config = config
        names = START_FALLBACK if config.decoder_start is None else (config.decoder_start,)
        self.start = special_id(self.special_ids, names, "seq2seq", "the decoder start token")
        self.end = special_id(self.special_ids, END_TOKENS, "seq2seq",
                              "the end of the source and of the target")
        self.bounds = store.document_bounds()  # (D+1,) first sequence of each pair
        fields = np.diff(self.bounds)  # (D,) sequences per line
        bad = np.flatnonzero(fields != 2)
        if bad.size:
            k = int(bad[0])
            first = store.sequence(int(self.bounds[k]))
            text = tokenizer.decode([int(t) for t in first[:20]]).strip()
            raise DataError(
                f"the seq2seq processor needs `source<TAB>target` pairs, but example {k} "
                f"(non-blank corpus line {k + 1}) of dataset {store.folder} has "
                f"{int(fields[k])} tab-separated field(s) (source starts {text!r}); "
                f"{bad.size} of {fields.size} lines are not pairs",
                hint="write each line as the source text, one tab, the target text, and "
                "re-run `tp preprocess`",
            )

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        first = int(self.bounds[index])
        source = self.store.sequence(first)[: self.config.seq_length - 1].astype(np.int64)
        target = self.store.sequence(first + 1)[: self.config.tgt_seq_length - 1].astype(np.int64)
        ids = np.concatenate([source, [self.end]])  # (T,)
        decoder = np.concatenate([[self.start], target])  # (T',) shifted right
        labels = np.concatenate([target, [self.end]])  # (T',)
        return {"input_ids": torch.from_numpy(ids), "tgt_input_ids": torch.from_numpy(decoder),
                "lm_labels": torch.from_numpy(labels)}


class Seq2SeqProcessor:
    """Translation-style pairs from `source<TAB>target` lines, for an encoder-decoder."""

    Config = Seq2SeqProcessorConfig
    corpus_format: ClassVar[str] = "tsv"

    def __init__(self, config: Seq2SeqProcessorConfig | None = None) -> None:
        self.config = config or Seq2SeqProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> Seq2SeqDataset:
        return Seq2SeqDataset(store, tokenizer, seed, self.config)

    def seq2seq_layout(self, special: dict[str, int]) -> tuple[int | None, list[int], list[int]]:
        """(decoder start id, ids before a source, ids after it), as `dataset` lays pairs out:
        the `decoder_start` option (else bos, else cls), the source ended by eos (else sep)."""
        names = START_FALLBACK if self.config.decoder_start is None else \
            (self.config.decoder_start,)
        end = next((special[r] for r in END_TOKENS if r in special), None)
        return (next((special[r] for r in names if r in special), None), [],
                [end] if end is not None else [])
