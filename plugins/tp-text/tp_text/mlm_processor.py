"""RoBERTa's "full sentences" data: the corpus as one stream, cut into full-length blocks.

The corpus is one document per line. At load time the documents are laid end to end with a
[SEP] after each (the document separator of Liu et al., 2019, section 4.2) and cut into blocks
of `seq_length - 2` tokens, each wrapped as ``[CLS] block [SEP]``; blocks may cross document
boundaries. Tokens are masked dynamically (independent tokens, whole words, or SpanBERT spans
with `span: geometric`, see `tpcli.data.masking`); segment ids are all 0 and there is no pair
label.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import Masker
from tpcli.data.format import Reader
from tpcli.data.masking import MaskingConfig
from tpcli.errors import DataError


class MlmProcessorConfig(MaskingConfig):
    """Options of the `mlm` processor (contiguous blocks + masking)."""

    seq_length: int = Field(128, ge=4, le=65536, description="tokens per example, with specials")


class MlmDataset(TextDataset):
    """Blocks of the document stream: input_ids, segment_ids, mlm_labels (T,)."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: MlmProcessorConfig):
        super().__init__(store, tokenizer, seed)
        for key in ("cls", "sep"):
            if key not in self.special_ids:
                raise DataError(f"the mlm processor needs a [{key.upper()}] token in the vocabulary")
        self.config = config
        self.masker = Masker(tokenizer, config)
        self.block = config.seq_length - 2  # room for [CLS] ... [SEP]
        seq_cum = np.concatenate([[0], np.cumsum(store.sequence_lengths(), dtype=np.int64)])
        self.doc_bounds = store.document_bounds()  # (D+1,) first sentence of each document
        doc_tokens = np.diff(seq_cum[self.doc_bounds])  # (D,)
        # Where each document starts in the stream "doc0 [SEP] doc1 [SEP] ..." (D+1,).
        self.doc_start = np.concatenate([[0], np.cumsum(doc_tokens + 1)]).astype(np.int64)
        self.doc_tokens = doc_tokens
        total = int(self.doc_start[-1]) - 1 if len(doc_tokens) else 0  # no [SEP] after the last
        self.total = max(total, 0)
        self.n_blocks = -(-self.total // self.block)

    def __len__(self) -> int:
        return self.n_blocks

    def block_tokens(self, k: int) -> np.ndarray:
        """Stream positions [k * block, (k + 1) * block) as token ids (no [CLS]/[SEP] wrap)."""
        lo, hi = k * self.block, min((k + 1) * self.block, self.total)
        sep = self.special_ids["sep"]
        pieces: list[np.ndarray] = []
        d = int(np.searchsorted(self.doc_start, lo, side="right")) - 1
        while d < len(self.doc_tokens) and self.doc_start[d] < hi:
            start, n = int(self.doc_start[d]), int(self.doc_tokens[d])
            first, end = int(self.doc_bounds[d]), int(self.doc_bounds[d + 1])
            a, b = max(lo - start, 0), min(hi - start, n)
            if b > a:
                pieces.append(self.store.sequences(first, end)[a:b])
            if lo <= start + n < hi:  # the separator after document d falls in this block
                pieces.append(np.array([sep]))
            d += 1
        return np.concatenate(pieces).astype(np.int64)

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        cls, sep = self.special_ids["cls"], self.special_ids["sep"]
        body = self.block_tokens(index)
        ids = torch.from_numpy(np.concatenate([[cls], body, [sep]]).astype(np.int64))  # (T,)
        inputs, labels = self.masker(ids, g)
        return {"input_ids": inputs, "segment_ids": torch.zeros_like(ids), "mlm_labels": labels}


class MlmProcessor:
    """RoBERTa full sentences: [CLS] block [SEP] over the document stream, dynamic masking."""

    Config = MlmProcessorConfig
    corpus_format: ClassVar[str] = "documents"

    def __init__(self, config: MlmProcessorConfig | None = None) -> None:
        self.config = config or MlmProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> MlmDataset:
        return MlmDataset(store, tokenizer, seed, self.config)
