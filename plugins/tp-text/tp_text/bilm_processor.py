"""ELMo's pre-training data: contiguous blocks of the document stream, no masking.

The corpus is one document per line. At load time the documents are laid end to end with the
tokenizer's `eos` (else `sep`) after each one and cut into blocks of `seq_length` tokens; the
last, partial block is kept (padded by collate). The `bilm` target predicts the next token with
the forward half of the encoder and the previous one with the backward half, from `input_ids`
alone, so an example is just `input_ids`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import DocumentStream, special_id
from tpcli.data.format import Reader
from tpcli.model.module import ModuleConfig


class BilmProcessorConfig(ModuleConfig):
    """Options of the `bilm` processor (contiguous blocks for a bidirectional LM)."""

    seq_length: int = Field(128, ge=2, le=1 << 20, description="tokens per example")


class BilmDataset(TextDataset):
    """Blocks of the document stream: input_ids (T,)."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: BilmProcessorConfig):
        super().__init__(store, tokenizer, seed)
        self.config = config
        sep = special_id(self.special_ids, ("eos", "sep"), "bilm", "the separator between "
                         "documents")
        self.stream = DocumentStream(store, sep)
        self.n_blocks = -(-self.stream.total // config.seq_length)

    def __len__(self) -> int:
        return self.n_blocks

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        t = self.config.seq_length
        ids, _, _ = self.stream.window(index * t, min((index + 1) * t, self.stream.total))
        return {"input_ids": torch.from_numpy(ids)}  # (T,)


class BilmProcessor:
    """ELMo blocks: the document stream cut into blocks, no masking, input_ids only."""

    Config = BilmProcessorConfig
    corpus_format: ClassVar[str] = "documents"

    def __init__(self, config: BilmProcessorConfig | None = None) -> None:
        self.config = config or BilmProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> BilmDataset:
        return BilmDataset(store, tokenizer, seed, self.config)
