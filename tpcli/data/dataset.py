"""The base of every processor's dataset: deterministic examples, masking, padding collate.

An example depends only on (seed, epoch, index): `__getitem__` seeds a fresh generator from the
three and hands it to `example`, so a resumed run, any worker count and any shuffle order see
the same examples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tpcli.data.format import Reader
from tpcli.data.masking import IGNORE, MaskingConfig, example_generator, mask_tokens
from tpcli.errors import DataError

UNMASKABLE = ("cls", "sep", "pad", "mask")  # never chosen for prediction


class Masker:
    """Dynamic masking for one tokenizer: which ids are special, which pieces start a word."""

    def __init__(self, tokenizer: Any, config: MaskingConfig) -> None:
        special = tokenizer.special_ids
        if "mask" not in special:
            raise DataError(
                "the tokenizer has no [MASK] token, which masked-language-model data needs",
                hint="use a vocabulary with [MASK]",
            )
        self.config = config
        self.mask_id = int(special["mask"])
        self.vocab_size = int(tokenizer.vocab_size)
        self.special = torch.tensor(sorted({int(special[k]) for k in UNMASKABLE if k in special}))
        self.continuation: torch.Tensor | None = None  # (V,) bool, for whole-word masking
        if config.whole_word_masking:
            fn = getattr(tokenizer, "continuation_mask", None)
            if fn is None:
                raise DataError(
                    "whole_word_masking needs a tokenizer that marks word pieces "
                    "(a continuation_mask() method)",
                    hint="set whole_word_masking: false or use the wordpiece tokenizer",
                )
            self.continuation = torch.from_numpy(np.asarray(fn(), dtype=bool))

    def __call__(self, ids: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) ids -> (masked input_ids (T,), mlm_labels (T,))."""
        maskable = ~torch.isin(ids, self.special)  # (T,)
        starts = None if self.continuation is None else ~self.continuation[ids]
        c = self.config
        return mask_tokens(
            ids, maskable, mask_id=self.mask_id, vocab_size=self.vocab_size, generator=g,
            mask_prob=c.mask_prob, mask_token_prob=c.mask_token_prob,
            random_token_prob=c.random_token_prob, word_starts=starts,
        )


class ExampleDataset(Dataset):
    """Map-style dataset over a stored corpus; subclasses implement `__len__` and `example`."""

    def __init__(self, store: Reader, tokenizer: Any, seed: int) -> None:
        self.store = store
        self.seed = int(seed)
        self.epoch = 0
        self.special_ids = dict(tokenizer.special_ids)
        self.pad_id = int(self.special_ids.get("pad", 0))

    def set_epoch(self, epoch: int) -> None:
        """Masking and sampling of the next `__getitem__` calls depend on this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range (0..{len(self) - 1})")
        return self.example(index, example_generator(self.seed, self.epoch, index))

    def pad_value(self, key: str) -> int:
        if key == "input_ids":
            return self.pad_id
        return IGNORE if key.endswith("labels") else 0

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad (T,) fields to the longest example, stack scalar fields; add `attention_mask`
        (B, T) bool, True on real tokens."""
        if not examples:
            raise ValueError("collate needs at least one example")
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])  # (B,)
        width = int(lengths.max())
        batch: dict[str, torch.Tensor] = {}
        for key, first in examples[0].items():
            if first.dim() == 0:
                batch[key] = torch.stack([e[key] for e in examples])  # (B,)
                continue
            out = torch.full((len(examples), width), self.pad_value(key), dtype=first.dtype)
            for row, e in enumerate(examples):
                out[row, : len(e[key])] = e[key]
            batch[key] = out  # (B, T)
        batch["attention_mask"] = torch.arange(width)[None, :] < lengths[:, None]  # (B, T)
        return batch
