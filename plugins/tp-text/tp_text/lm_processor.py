"""GPT-2's pre-training data: the corpus as one packed stream, cut into full blocks.

The corpus is one document per line. At load time the documents are laid end to end with the
end-of-text token after each one (the tokenizer's `eos`, else its `sep`) and cut into blocks of
exactly `seq_length` tokens, so no example carries padding; blocks cross document boundaries.
The last, partial block is kept (the only example that is shorter, padded by collate) so a small
corpus loses no text. `lm_labels` hold the next token at each position; -100 at a block's last
position (its next token is in the next block) and at each end-of-text token (the next token
starts an unrelated document). With `reset_positions`, `position_ids` restart at 0 at the start
of each document in the block (and at the block start), as Megatron-LM's reset_position_ids.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tp_text.batch_keys import TextDataset
from tpcli.data.dataset import DocumentStream, special_id
from tpcli.data.format import Reader
from tpcli.data.masking import IGNORE
from tpcli.model.module import ModuleConfig


class LmProcessorConfig(ModuleConfig):
    """Options of the `lm` processor (packed blocks for a decoder-only language model)."""

    seq_length: int = Field(1024, ge=2, le=1 << 20, description="tokens per example")
    reset_positions: bool = Field(
        False, description="emit position_ids that restart at 0 at each document in a block"
    )


def restart_positions(starts: np.ndarray) -> np.ndarray:
    """(n,) bool, True where a new run begins (True at 0 too) -> (n,) position within its run."""
    idx = np.arange(starts.size)
    run_start = np.maximum.accumulate(np.where(starts, idx, 0))
    return idx - run_start


class LmDataset(TextDataset):
    """Packed blocks: input_ids, lm_labels (T,) and, with reset_positions, position_ids (T,)."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int, config: LmProcessorConfig):
        super().__init__(store, tokenizer, seed)
        self.config = config
        eos = special_id(self.special_ids, ("eos", "sep"), "lm", "the end-of-text separator "
                         "between packed documents")
        self.stream = DocumentStream(store, eos)
        self.n_blocks = -(-self.stream.total // config.seq_length)

    def __len__(self) -> int:
        return self.n_blocks

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        t = self.config.seq_length
        lo, hi = index * t, min((index + 1) * t, self.stream.total)
        ids, doc, is_sep = self.stream.window(lo, hi)  # (n,)
        labels = np.full(ids.shape, IGNORE, np.int64)
        labels[:-1] = ids[1:]
        labels[is_sep] = IGNORE  # the next token begins another document
        out = {"input_ids": torch.from_numpy(ids), "lm_labels": torch.from_numpy(labels)}
        if self.config.reset_positions:
            starts = np.ones(ids.shape, bool)
            starts[1:] = doc[1:] != doc[:-1]
            out["position_ids"] = torch.from_numpy(restart_positions(starts))
        return out


class LmProcessor:
    """GPT-2 packing: documents + end-of-text, cut into full blocks; next-token labels."""

    Config = LmProcessorConfig
    corpus_format: ClassVar[str] = "documents"

    def __init__(self, config: LmProcessorConfig | None = None) -> None:
        self.config = config or LmProcessorConfig()

    def dataset(self, store: Reader, tokenizer: Any, seed: int) -> LmDataset:
        return LmDataset(store, tokenizer, seed, self.config)
