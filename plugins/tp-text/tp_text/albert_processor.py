"""ALBERT's pre-training data: sentence-order prediction plus dynamic n-gram masking.

The corpus is one sentence per line with a blank line between documents, cut into chunks as the
`bert` processor does. Each epoch, chunk `i` is split into two consecutive segments of one
document, A then B: at a random sentence boundary when the chunk has several sentences; else B
is the sentences that follow in the document; else (a document's last, lone sentence) the
sentence is split at a random token. With `swap_prob` the two are swapped. The example is
``[CLS] first [SEP] second [SEP]`` with `sp_labels` 0 = original order, 1 = swapped, as Hugging
Face AlbertForPreTraining's `sentence_order_label`; B never comes from another document (Lan et
al., 2020, 4.2). The longer side is trimmed as in BERT, then tokens are masked: by default
ALBERT's n-grams (`span: ngram`, n <= 3 with odds 1/n), any `MaskingConfig` choice otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tp_text.bert_processor import chunk_documents, pair_example
from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import Masker
from tpcli.data.format import Reader
from tpcli.data.masking import MaskingConfig, Span
from tpcli.errors import DataError

IN_ORDER, SWAPPED = 0, 1


class AlbertProcessorConfig(MaskingConfig):
    """Options of the `albert` processor (sentence order + masking)."""

    span: Span = Field("ngram", description="masked spans: 'ngram' (ALBERT: n <= max_span, odds "
                       "1/n), 'geometric' (SpanBERT) or 'none'")
    seq_length: int = Field(128, ge=8, le=65536, description="tokens per example, with specials")
    short_seq_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="share of examples with a random shorter target length"
    )
    swap_prob: float = Field(0.5, ge=0.0, le=1.0, description="share of pairs given swapped")


def _coin(g: torch.Generator, p: float) -> bool:
    return float(torch.rand(1, generator=g)) < p


class AlbertDataset(TextDataset):
    """Sentence-order pairs: input_ids, segment_ids, mlm_labels (T,) and sp_labels ()."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: AlbertProcessorConfig):
        super().__init__(store, tokenizer, seed)
        for key in ("cls", "sep"):
            if key not in self.special_ids:
                raise DataError(
                    f"the albert processor needs a [{key.upper()}] token in the vocabulary",
                    hint="use a vocabulary with [CLS], [SEP] and [MASK]")
        self.config = config
        self.masker = Masker(tokenizer, config)
        self.max_tokens = config.seq_length - 3  # room for [CLS] A [SEP] B [SEP]
        lengths = store.sequence_lengths()
        self.doc_bounds = store.document_bounds()  # (D+1,)
        self.cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # (S+1,)
        rng = np.random.default_rng(self.seed)
        self.start, self.end, self.target, self.doc = chunk_documents(
            lengths, self.doc_bounds, self.max_tokens, config.short_seq_prob, rng
        )

    def __len__(self) -> int:
        return len(self.start)

    def _segments(self, i: int, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) token ids: two consecutive pieces of chunk i's document."""
        s0, e, doc = int(self.start[i]), int(self.end[i]), int(self.doc[i])
        n = e - s0
        if n > 1:
            a_end = s0 + 1 + int(torch.randint(n - 1, (1,), generator=g))
            return self.store.sequences(s0, a_end), self.store.sequences(a_end, e)
        doc_end = int(self.doc_bounds[doc + 1])
        if e < doc_end:  # one sentence: B is what follows it in the document
            need = max(1, int(self.target[i]) - int(self.cum[e] - self.cum[s0]))
            b_end = int(np.searchsorted(self.cum, self.cum[e] + need, side="left"))
            b_end = min(max(b_end, e + 1), doc_end)
            return self.store.sequences(s0, e), self.store.sequences(e, b_end)
        tokens = self.store.sequences(s0, e)  # a lone last sentence: split it at a token
        if len(tokens) < 2:
            return tokens, tokens[:0]
        cut = 1 + int(torch.randint(len(tokens) - 1, (1,), generator=g))
        return tokens[:cut], tokens[cut:]

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        a, b = self._segments(index, g)
        label = IN_ORDER
        if len(b) and _coin(g, self.config.swap_prob):
            a, b, label = b, a, SWAPPED
        return pair_example(a, b, label, self.max_tokens, self.special_ids, self.masker, g)


class AlbertProcessor:
    """ALBERT pairs: [CLS] A [SEP] B [SEP], in order (0) or swapped (1), n-gram masking."""

    Config = AlbertProcessorConfig
    corpus_format: ClassVar[str] = "sentences"

    def __init__(self, config: AlbertProcessorConfig | None = None) -> None:
        self.config = config or AlbertProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> AlbertDataset:
        return AlbertDataset(store, tokenizer, seed, self.config)
